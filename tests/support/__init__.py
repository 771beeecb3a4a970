"""Real test peers (Git server, WOS simulator, engines) and waiting helpers."""
