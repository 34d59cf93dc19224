"""How the committed dce_phase1 demo weights (v0.2.0) were made, as one recipe: config `small`
(Pix2Pix at CPU width, 3500 steps) on phantom subjects, one torch thread, no further stages.
`build_demo` follows it and the card records it (`build.recipe`)."""

from __future__ import annotations

from models.chain import Recipe

RECIPE = Recipe(task="dce_phase1", version="0.2.0", config="small",
                data="models.dce.phantom: paired non-contrast T1 and first DCE phase, subjects split by seed",
                options=(("threads", 1),))  # as the card's run
