"""The four pruning methods and the latency-model kind each prices with by default (a light module: the
command line lists them without importing torch)."""

METHODS = ("halp", "mgp", "mdlm", "mdp")
# method -> latency-model kind fitted on a LUT when no stored model is named (HALP/MGP: LLM, MDLM/MDP: MDLM)
DEFAULT_KIND = {"halp": "llm", "mgp": "llm", "mdlm": "mdlm", "mdp": "mdlm"}
