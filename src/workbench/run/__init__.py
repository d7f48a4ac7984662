"""Running notebooks: parameters, the papermill engine, jobs, the store agent, the runner,
batches and their pool, reports."""
