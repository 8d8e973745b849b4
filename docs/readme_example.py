"""The README's API walk-through; running it prints the numbers quoted there.

    .venv/bin/python docs/readme_example.py

It also writes ``docs/khat_digits.png`` and ``docs/khat_digits_refined.png``, the k-hat
figures shown in the README.
"""

import time
from pathlib import Path

import arviz as az
import torch

import ppvae
from ppvae import plots

torch.set_num_threads(1)  # small networks: one thread is fastest on a 2-core machine
torch.manual_seed(0)  # the initial weights; fit(seed=...) seeds training itself
ds = ppvae.load_dataset("digits")
print(ds.describe())

vae = ppvae.VAE(
    ds.event_shape,
    latent_dim=8,
    likelihood=ds.likelihood,
    likelihood_kwargs=ds.likelihood_kwargs,
    hidden=(256, 256),
)
start = time.perf_counter()
hist = ppvae.fit(vae, ds, epochs=100, batch_size=128, lr=1e-3, seed=0, progress=False)
print(f"trained {len(hist.train_objective)} epochs in {time.perf_counter() - start:.1f} s")
print(f"validation ELBO per digit: {hist.val_elbo[-1]:.2f}")

start = time.perf_counter()
res = ppvae.log_likelihood(vae.model, vae.guide, ds.test, num_samples=1000, seed=0)
seconds = time.perf_counter() - start
print(res.guide_only.summary())  # the guide alone
print(res.summary())  # proposal="auto": refined where k-hat rejects the guide
print(f"refined {res.num_refined} of {len(res)} digits; {seconds:.1f} s in all")
print(ppvae.khat_summary(res)["verdict"])

# The gold standard on the first 20 test digits, and the paired difference.
x20 = ds.test[:20]
ais = ppvae.ais_log_likelihood(vae.model, vae.guide, x20, num_steps=1000, seed=0)
refined20 = ppvae.log_likelihood(vae.model, vae.guide, x20, proposal="refine", seed=0)
diff = refined20.per_datapoint - ais.per_datapoint
se = (refined20.mc_stderr_per_datapoint**2 + ais.mc_stderr_per_datapoint**2).sum().sqrt() / 20
print(f"refined IS - AIS on 20 digits: {diff.mean():+.3f} ± {se:.3f} nats (MC s.e.)")
print(ppvae.bdmc(vae.model, vae.guide, ds.test, num_datapoints=10, num_steps=1000, seed=0))

iwae = ppvae.VAE(
    ds.event_shape,
    latent_dim=8,
    likelihood=ds.likelihood,
    likelihood_kwargs=ds.likelihood_kwargs,
    hidden=(256, 256),
)
ppvae.fit(iwae, ds, epochs=100, elbo="iwae", num_particles=8, seed=0, progress=False)
res_iwae = ppvae.log_likelihood(iwae.model, iwae.guide, ds.test, num_samples=1000, seed=0)
table = ppvae.compare({"elbo-trained": res, "iwae-trained (K=8)": res_iwae})
columns = ["mean", "stderr", "diff", "diff_stderr", "elbo", "khat_above_threshold"]
print(table[columns].round(3).to_string())

idata = ppvae.inference.inference_data(
    vae.model, vae.guide, ds.test[:50], num_samples=1000, num_draws=200, seed=0
)
print(idata)
print(az.summary(idata, var_names=["z"], kind="diagnostics").head(4).to_string())

fig = plots.plot_khat(res.guide_only.khat, num_samples=res.num_samples)
plots.save_figure(fig, Path(__file__).with_name("khat_digits.png"))
fig = plots.plot_khat(res.khat, num_samples=res.num_samples)
plots.save_figure(fig, Path(__file__).with_name("khat_digits_refined.png"))
