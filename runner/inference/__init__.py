"""Using a trained model: export it (export.py), load it without this code base (artifact.py), predict on patches
(predict.py) and whole slides (slides.py), serve it over HTTP (serve.py)."""
