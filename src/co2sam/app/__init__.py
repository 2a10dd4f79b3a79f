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
page.py       the Gradio page: the three tabs in one gr.Blocks
segment_tab.py, review_tab.py, run_tab.py   each tab's handlers and components
server.py     what the page shows (the context) and launching it with safe defaults
gradio_env.py importing Gradio offline (no telemetry), uploads in a private folder

Only the page, the tabs and the server need the ``app`` extra (``pip install -e ".[app]"``);
the other modules are plain functions. The tabs' handlers are plain methods too: the
unit tests call them without a browser.
"""
