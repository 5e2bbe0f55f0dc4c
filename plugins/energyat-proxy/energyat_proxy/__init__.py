"""energyat-proxy: adversarial training on real plus synthetic (proxy-distribution) images.

Installed, it registers (through the ``energyat`` entry point, module
:mod:`energyat_proxy.plugin`) the data source ``proxy``: ``energyat train --source
proxy:samples.npz`` mixes the synthetic images of an ``.npz`` into every batch, as Sehwag
et al. (ICLR 2022) do (``--set source.ratio=R`` sets how many per real image).
"""

from energyat_proxy.npz import ProxySet, load_proxy
from energyat_proxy.source import ProxySource

__version__ = "0.1.0"

__all__ = ["ProxySet", "ProxySource", "__version__", "load_proxy"]
