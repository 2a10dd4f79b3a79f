"""``co2sam app``: a local web page (Gradio) to segment images, review pseudo-labels and
look at a training run. It imports the library; nothing in the library imports it.

settings.py   what the app is started with (host, limits, models, folders), checked early
paths.py      file access confined to the folders the app was given (no path traversal)
models.py     SAM without and with the adapter, the optional detector
segment.py    the Segment tab's work: boxes drawn or detected -> label maps -> overlay,
              legend, per-class areas, label PNG and JSON downloads
review.py     the Review tab's folder: ids, per-image IoU or confidence, views, flags
runs.py       the Run tab's folder: CSV logs, validation history, per-class IoU, confusion
workspace.py  what the app opens when given nothing: the demo's data, run and pseudo-labels
page.py       the Gradio page (the only module that imports gradio, with server.py)
server.py     launching it with safe defaults

Only ``page.py`` and ``server.py`` need the ``app`` extra (``pip install -e ".[app]"``);
the other modules are plain functions, tested without a browser.
"""
