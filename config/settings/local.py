"""Developer machine: the base settings as they are (DEBUG only when DJANGO_DEBUG is set)."""

from config.settings.base import *
