"""Reproduction of Jaderberg et al., "Spatial Transformer Networks" (NIPS 2015): data, models, recipes."""
