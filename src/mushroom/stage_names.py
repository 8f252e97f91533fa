"""The pipeline's stages, in order: the one list that scheduling, the console and the tests read."""

STAGES = ("acquire", "split", "prepare", "tune", "train", "quantize", "evaluate", "compare", "publish")
# The stages inside the pipeline's ParallelFor: up to `parallelism` model configurations run them
# at once, each configuration one stage after the other. The others run alone.
LOOP_STAGES = ("tune", "train", "quantize", "evaluate")
