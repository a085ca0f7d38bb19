"""LoRA Loom trainer: the engine behind the app, runnable as ``python -m trainer``.

It never imports gradio or the gui package.
"""
