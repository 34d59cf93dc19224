"""How the committed brain_contrasts demo weights were made: the first config, its warm
restarts, the fine-tuning stages, the post filter and the pair gate bias. `build_demo`
replays it and the card records it (`build.command`)."""

from __future__ import annotations

from models.guided_filter import GuidedFilter

DEMO_CONFIG = "small_paired"  # the seed's losses plus an L1 pull to the registered sibling (see train.py)
DEMO_VERSION = "0.6.0"
DEMO_RESTART_TO: tuple[str | int, ...] = (4500,)  # 3000 steps, then a warm restart to 4500
# then change-weighted paired L1, twice the same with the input gate, twice with the gate
# knowing the source and told where T1 <-> T1c repeat the input, then that term balanced
# over the rim, then the rim weighted 3x (how v0.4.0 was made; v0.5.0 is the same network);
# then (v0.6.0) that stage on 96 training subjects, again with the decoder's own image pulled
# to the target, and twice on 192 subjects with that term at 20 (3000 steps each)
DEMO_THEN: tuple[str, ...] = ("small_paired_change", "small_paired_change_gate", "small_paired_change_gate",
                              "small_paired_change_gate_pair", "small_paired_change_gate_pair",
                              "small_paired_change_gate_pair_bal", "small_paired_change30_gate_pair_bal",
                              "small_paired_change30_gate_pair_bal_n96", "small_paired_change30_gate_pair_bal_n96_dec",
                              "small_paired_change30_gate_pair_bal_n192_dec20",
                              "small_paired_change30_gate_pair_bal_n192_dec20")
# exported after the network (v0.5.0 on): chosen on the validation subjects (42000..42001;
# pooled body SSIM 0.865 -> 0.887, MAE 0.0368 -> 0.0348 with v0.4.0's network)
DEMO_POST_FILTER = GuidedFilter(radius=2, sigma_px=2.0, sigma_range=0.04)
# added to the T1 -> T1c pair's learnt gate logit before export (v0.6.0 on): the smallest bias
# of the grid at which T1 -> T1c beats both baselines on every metric on the validation
# subjects 52000..52003 (`python -m models.brain.gate_bias --checkpoint ...`: 5.5; tumour
# error 0.74 of the input's there, 0.48 without the bias)
DEMO_GATE_BIAS: tuple[tuple[str, str, float], ...] = (("t1", "t1c", 5.5),)
