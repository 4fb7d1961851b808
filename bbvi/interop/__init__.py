"""Interoperability: fit NumPyro models directly, and export fits to ArviZ.

`from_numpyro` needs only numpyro (a bbvi dependency); `to_inference_data` needs arviz, imported
when it is called (`pip install 'bbvi[arviz]'`), so `import bbvi` never does.
"""

from bbvi.interop.arviz import to_inference_data
from bbvi.interop.numpyro_model import NumpyroModel, from_numpyro

__all__ = ["NumpyroModel", "from_numpyro", "to_inference_data"]
