"""How the committed pseudo_mri demo weights (v0.5.0) were made, as one recipe: config `small`
(seed 004's CycleGAN at CPU width, no identity term, soft-tissue HU curve) for 3000 steps,
warm restarts to 6000 and to 9000 with the NGF structure term on, then fine-tuning stages and
the CT-guided post filter. `build_demo` follows it and the card records it (`build.recipe`).
What each stage measured, and the stages tried and dropped: models/EXPERIMENTS.md."""

from __future__ import annotations

from models.chain import Recipe, Stage
from models.guided_filter import GuidedFilter

STAGES: tuple[Stage, ...] = (
    Stage.of("restart", restart=True, steps=6000),
    Stage.of("restart_ngf", restart=True, steps=9000, lambda_ngf=20.0),
    Stage.of("tv", steps=1500, lr=1e-4, lambda_tv=5.0),  # total variation (was small_curve_tv_ngf)
    Stage.of("skip", **{"net.long_skip": True}),  # a full-resolution skip (small_curve_skip_ngf)
    Stage.of("n24", n_train=24),  # then on 24, 48, 96 subjects per region and modality (..._24/_48/_96)
    Stage.of("n48", n_train=48, steps=3000),
    Stage.of("n96", n_train=96),
)

# exported after the generator (v0.5.0 on): chosen on the validation subjects (42000..42002 per
# region; organ Dice 0.950 -> 0.969, body SSIM 0.641 -> 0.697 with v0.4.0's generator)
DEMO_POST_FILTER = GuidedFilter(radius=3, sigma_px=2.0, sigma_range=0.1)

RECIPE = Recipe(
    task="pseudo_mri", version="0.5.0", config="small", stages=STAGES,
    data="models.ct.phantom: unpaired CT (even train seeds) and T2 MRI (odd), abdomen and head-neck",
    options=(("threads", 1),),  # as the card's runs
    export=(("post_filter", DEMO_POST_FILTER),))
