"""Hardware detection, sweep planning, timing backends, sweep runner, whole-model timing."""
