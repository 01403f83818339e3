"""The command line's exit codes (no imports: the entry point reads them before anything loads).

0 success; 1 a check failed (check: an error rule of the policy failed; collide: a collision
claimed exact did not pass validation; validate: the inputs do not collide; audit: reserved); 2
usage error; 3 the model cannot be read or holds something we cannot analyse (check: a model
could not be read and no error rule failed); 130 interrupted (Ctrl-C).
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a job stopped by Ctrl-C
