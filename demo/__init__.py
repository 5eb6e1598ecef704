"""The offline demo: a procedural product catalog and a small CLIP trained on it.

A demo and test asset only: pretrained CLIP weights cannot be downloaded where this
project is built, so the demo model shows real semantic behaviour on synthetic products.
"""
