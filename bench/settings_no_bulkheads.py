"""The bench's "bulkheads off" web: webhook deliveries run inside the request threads.

``CELERY_TASK_ALWAYS_EAGER`` makes ``deliver.apply_async`` (called after commit) run the
delivery in the web process, in the thread that served the request, as a web app that
sends its webhooks itself does: no queue and no worker pool of their own. Bench only.
"""

from config.settings.test import *  # noqa: F403 - a settings layer extends the test one

CELERY_TASK_ALWAYS_EAGER = True
