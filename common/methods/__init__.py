"""Methods' shared parts: each built-in method's typed parameters, and the plug-in descriptor ``Method``.

A method lives in three places: its parameters here (both ends read them),
its server strategy (``fedsqueeze.server.strategies``) and its client trainer
(``fedsqueeze.client.trainers``). A method from outside the package is a
``Method`` registered under the entry-point group ``fedsqueeze.methods`` or
named by import path (``--method "mypkg.methods:MINE(k=4)"``).
"""

from fedsqueeze.methods.autoencoder import AutoencoderParams
from fedsqueeze.methods.base import DistillationParams, Method, MethodParams, param
from fedsqueeze.methods.fedavg import FedAvgParams
from fedsqueeze.methods.fedcompress import FedCompressParams
from fedsqueeze.methods.reft import ReftParams
from fedsqueeze.plugins import Plugin, PluginError, resolve

BUILTIN_PARAMS: dict[str, type[MethodParams]] = {
    cls.method: cls for cls in (FedAvgParams, FedCompressParams, AutoencoderParams, ReftParams)}


def method_plugin(name: str) -> Plugin:
    """A method that is not built in: an entry point of ``fedsqueeze.methods`` or an import path to a ``Method``."""
    plugin = resolve("methods", name, {})
    if not isinstance(plugin.target, Method):
        raise PluginError(f"method {name!r} is a {type(plugin.target).__name__}, not a fedsqueeze.methods.Method")
    return plugin


__all__ = ["AutoencoderParams", "BUILTIN_PARAMS", "DistillationParams", "FedAvgParams", "FedCompressParams", "Method",
           "MethodParams", "ReftParams", "method_plugin", "param"]
