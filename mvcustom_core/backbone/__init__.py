"""Backbone: SD1.5 + AnimateDiff UNetMotionModel, dense spatio-temporal attention, the sampler core.

Submodules (import them directly; this package imports nothing heavy on its own):
    dense_attention  dense / windowed spatio-temporal attention processors (paper §3.3)
    schedule         progressive window schedule for Stage-0 training
    sampler          DDIM / Euler sampling with CFG, seeds, progress, interrupt, hooks
    hooks            StepContext / step hooks and named-layer FeatureHook
    loading, text, tiny   model loading, text encoding and tiny random backbones (engineer E)
"""
