"""The data sets: one module per data set; importing this package registers them all."""

from reprlab.platform.data.sets import glyphs  # noqa: F401
from reprlab.platform.data.sets import colored_digits  # noqa: F401
from reprlab.platform.data.sets import cub  # noqa: F401
from reprlab.platform.data.sets import cars  # noqa: F401
from reprlab.platform.data.sets import sop  # noqa: F401
from reprlab.platform.data.sets import inshop  # noqa: F401
from reprlab.platform.data.sets import vehicleid  # noqa: F401
