"""Plugins from recent PRVR papers, one module each, switched on by name in a trial's config.

Every module of this package is imported here, so a plugin registered in a new file (``@register_plugin``)
is available without any other edit. The interface a plugin implements is in ``base.py``.
"""

import importlib
import pkgutil

from trainables.plugins.base import Plugin, PluginConfig, VideoInputs, list_plugins, plugin_class, register_plugin

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Plugin", "PluginConfig", "VideoInputs", "list_plugins", "plugin_class", "register_plugin"]
