"""Many runs on one host: the pool behind `--runs FILE` (docs/design.md: Many runs).

Each run gets its own single-run supervisor as a child process (`python -m
supervisor --run-id …`, forked by the pool's launcher, which imported it once),
which brings its own workers; runs share nothing but the host, so one crashing
never disturbs another. The pool:

- does the shared work once, before any run starts: reads every distinct config
  (a bad one fails everything, exit 2) and finds or downloads Codex (its folder
  goes first on the children's PATH, so no child downloads again);
- hands out GPUs (`--gpus-per-run`, or `gpus=` on a line) through
  `CUDA_VISIBLE_DEVICES`, never one GPU to two runs at once, and holds back runs
  until their GPUs (and a `--max-parallel` slot) are free;
- reports a run whose supervisor was killed by a signal (the supervisor could
  not report it itself) with `POST /runs/{id}/error`;
- on SIGINT/SIGTERM forwards that signal to every supervisor (each cancels its
  Codex and reports `cancelled (SIGINT)` or `(SIGTERM)`); a second signal SIGKILLs them all.

Tokens go to children in the environment, never on a command line (`ps` shows
those to every user). Children run in their own sessions, so a Ctrl-C on the
terminal reaches only the pool, which decides what each run gets; and they get
PR_SET_PDEATHSIG, so they do not outlive a SIGKILLed pool.

Each child's stdout/stderr goes to `$FLYWHEEL_HOME/state/<run_id>/pool-output.log`
so the status view stays readable; its last line is shown for a failed run.

Modules:
- `main`: the entry point (`run_many`, `run_pool`) and the work done once for all runs;
- `runs_file`: reading the `--runs` file into `RunSpec`s;
- `decisions`: the pure decisions (exit statuses, GPUs, who starts next,
  each child's command and environment);
- `states`: the states a run goes through;
- `loop`: the event loop (`Pool`) that starts, reaps and cancels children;
- `children`: what is done to one child process;
- `launcher`: the process that forks the supervisors; `launched`: the pool's side of it;
- `proc_title`: a forked supervisor's command line, as `ps` shows it;
- `report`: the `error` report of a run whose supervisor was killed;
- `gpus`: which GPUs the host has, and who holds which;
- `status_view`: what the user sees (a live table or plain lines).
"""
