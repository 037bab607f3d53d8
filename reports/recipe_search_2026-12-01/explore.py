# The recipe search as it ran on 2026-12-01 (README.md in this folder), kept as a record. The code has moved on
# since: cfg.data is now cfg.task_data(), and method.cond_dropout became method.class_dropout + method.meta_dropout
# (H_B_cfg2 here is class_dropout=0.1, meta_dropout=0.1). Each curve is written next to this file.
import json, sys, time, torch
from pathlib import Path
from dataclasses import replace
torch.set_num_threads(2)
from benchmark.registry import TASKS, load_plugins
from benchmark.runner import build_config
from benchmark.quality import SampleQuality, quality_curve
load_plugins()
cfg = build_config("medi", "nsclc", "cpu", 0, "cpu", [])
task = TASKS.get("nsclc")(cfg.data, cfg.split, Path("results/cache"), False)
train = task.splits(0)["train"].load()
q = SampleQuality(train, list(task.classes))
recipes = {
 "ref": dict(),
 "A_cos_minsnr_lr1e-3_1k": dict(steps=1000, lr=1e-3, noise_schedule="cosine", loss_weighting="min_snr"),
 "B_lin_minsnr_lr1e-3_1k": dict(steps=1000, lr=1e-3, loss_weighting="min_snr"),
 "C_plain_1k": dict(steps=1000),
 "D_cos_minsnr_lr2e-3_1k": dict(steps=1000, lr=2e-3, noise_schedule="cosine", loss_weighting="min_snr", ema_decay=0.995),
 "E_lin_minsnr_lr2e-3_1k": dict(steps=1000, lr=2e-3, loss_weighting="min_snr"),
 "F_lin_minsnr_lr2e-3_b64_600": dict(steps=600, lr=2e-3, loss_weighting="min_snr", batch_size=64),
 "G_lin_minsnr_lr1e-3_3k": dict(lr=1e-3, loss_weighting="min_snr"),
 "J_lin_minsnr_lr1e-3_1500": dict(steps=1500, lr=1e-3, loss_weighting="min_snr"),
 "H_B_cfg2": dict(steps=1000, lr=1e-3, loss_weighting="min_snr", cond_dropout=0.1, guidance_scale=2.0),
 "I_lin_minsnr_lr1e-3_1k_ema995": dict(steps=1000, lr=1e-3, loss_weighting="min_snr", ema_decay=0.995),
}
from benchmark.quality import cyclegan_curve
cg = {
 "cg_ref": dict(),
 "cg_400": dict(steps=400, decay_steps=200),
 "cg_400_lr5e-4": dict(steps=400, decay_steps=200, lr=5e-4),
}
ccfg = build_config("cyclegan", "nsclc", "cpu", 0, "cpu", [])
for name in sys.argv[1:]:
    out = Path(__file__).with_name(f"{name}.json")
    if out.exists(): continue
    t = time.time()
    if name.startswith("cg"):
        curve = cyclegan_curve(replace(ccfg.method_params, **cg[name]), train, task, q, points=8)
    else:
        curve = quality_curve(replace(cfg.method_params, **recipes[name]), train, task, q, points=10 if name == "ref" else 8)
    out.write_text(json.dumps(curve))
    print(name, round(time.time() - t), curve[-1], flush=True)
