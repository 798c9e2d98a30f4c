"""Self-Rewarding Language Models and CREAM as a DVC pipeline: the shared library of the stages."""
