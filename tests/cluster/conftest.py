import logging
class H(logging.Handler):
    def emit(self, r):
        f = getattr(r, "fields", None)
        if f and r.levelno >= logging.WARNING:
            print("LOG", r.getMessage(), f, flush=True)
def pytest_configure(config):
    logging.getLogger().addHandler(H())
