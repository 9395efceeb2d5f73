"""Keras 3 models: the reference's ``TF*`` classes, on the TensorFlow backend unless told otherwise.

Importing this package picks the backend (``KERAS_BACKEND``, TensorFlow by default) before Keras is
first imported; the model files import Keras, this file does not.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
