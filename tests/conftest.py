"Shared pytest set-up for the end-to-end tests: headless plotting and a small, deterministic hypothesis profile."
import os

os.environ.setdefault('MPLBACKEND', 'Agg')

from hypothesis import settings, HealthCheck

settings.register_profile('fastmed', deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile('fastmed')


def pytest_pycollect_makeitem(collector, name, obj):
    "Collect only test functions defined in the test module itself, not `test_*` helpers a star import brought in."
    if name.startswith('test') and callable(obj) and getattr(obj, '__module__', None) != collector.obj.__name__:
        return []
