import os

from hypothesis import settings

# Property tests run many small batches; compiled kernels make the first example slow.
settings.register_profile("default", deadline=None, max_examples=60)
settings.register_profile("ci", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
