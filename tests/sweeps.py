"""What the sampler, schedule and training tests sweep: every built-in VP schedule and timestep spacing."""

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")
SPACINGS = ("leading", "trailing", "linspace")
