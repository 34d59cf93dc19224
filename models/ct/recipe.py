"""How the committed pseudo_mri demo weights were made: the first config, its warm restarts
(one switching the NGF term on), the fine-tuning stages and the CT-guided post filter.
`build_demo` replays it and the card records it (`build.command`)."""

from __future__ import annotations

from models.guided_filter import GuidedFilter

DEMO_CONFIG = "small_curve"  # seed 004's CycleGAN at CPU width, no identity term, soft-tissue HU curve
DEMO_VERSION = "0.5.0"
# 3000 steps, a warm restart to 6000, another to 9000 with the NGF structure term switched on
DEMO_RESTART_TO: tuple[str | int, ...] = (6000, "9000:lambda_ngf=20")
# then total variation, then a long skip, then the same on 24, 48 and 96 training subjects
# per region and modality (how v0.4.0 was made; v0.5.0 is the same generator)
DEMO_THEN: tuple[str, ...] = ("small_curve_tv_ngf", "small_curve_skip_ngf", "small_curve_skip_ngf_24",
                              "small_curve_skip_ngf_48", "small_curve_skip_ngf_96")
# exported after the generator (v0.5.0 on): chosen on the validation subjects (42000..42002 per
# region; organ Dice 0.950 -> 0.969, body SSIM 0.641 -> 0.697 with v0.4.0's generator)
DEMO_POST_FILTER = GuidedFilter(radius=3, sigma_px=2.0, sigma_range=0.1)
