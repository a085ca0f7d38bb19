"""Every setting, in the page's order: the one declaration the form, the job, validation and metadata read."""
from __future__ import annotations

from .catalog_advanced import ADVANCED, REGULARIZERS, SAMPLES, WEIGHTS_BLOCKS_CONV
from .catalog_basic import BASIC, MODEL_AND_FOLDERS
from .catalog_launch import LAUNCH
from .setting import Setting

SETTINGS: tuple[Setting, ...] = (MODEL_AND_FOLDERS + BASIC + WEIGHTS_BLOCKS_CONV + REGULARIZERS + ADVANCED + LAUNCH
                                  + SAMPLES)
SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
