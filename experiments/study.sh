#!/usr/bin/env bash
# The study of local regularization's probe, penalty form, draws and weight (docs/results.md,
# "Study: probe, penalty form, draws, self-tuning weight"). Every run records its settings; the
# runner skips runs already in a results folder, so rerunning a phase resumes it.
#   experiments/study.sh PHASE      PHASE in: digits, digits_tight, spiral, tabular, digits_draws,
#                                   digits_adaptive, spiral_weight, ratio_tune, ratio,
#                                   ratio_every, ratio_reference, ratio_tasks, ratio_targets,
#                                   ratio_mnist_tight, ratio_field, ratio_field2, defaults,
#                                   defaults_mnist_tight, field_probe, field_every, synthetic,
#                                   default_variants, probe_float64, rnode_ratio, kinetic,
#                                   kinetic_sde, lotka, lotka_long, default_gradients, mnist_long,
#                                   target_rule TASK (quantiles, pendulum), quantiles_long,
#                                   long_training [latent_ode], sde_interp, held_out_2,
#                                   mnist_full, sde_candidate, longer_training,
#                                   end_read_floor F [long]
# LR overrides the program (default: local-reg; every call is "$LR experiment ...").
set -euo pipefail
cd "$(dirname "$0")/.."
LR="${LR:-local-reg}"
COMMON=(--seeds 3 --quick --threads 1 --no-progress)
PAPER='{"start": 2.5, "end": 1.0}'
# LocallyRegularized's default before the kinetic penalty: the paper's penalty EEst * |dt| with its
# default weight (RatioWeight(1), field scope, every 10) and probe ("initial-hairer"; an SDE's "initial").
PREVIOUS_DEFAULT=(--set weights.local-random=default --set local.penalty=error-dt)
ADAPTIVE_LOG='{"adaptive": 0.01, "loss_rise": 0.1, "w_min": 0.0001, "w_max": 1.0}'
ADAPTIVE_GROWTH='{"adaptive": 0.1, "loss_rise": 0.1, "w_min": 0.001, "w_max": 10.0}'

vanilla() {  # vanilla TASK OUT [extra --set ...]
    local task=$1 out=$2
    shift 2
    $LR experiment "$task" --methods vanilla "${COMMON[@]}" --out "$out" "$@"
}

variant() {  # local-random at one option set: variant TASK OUT PROBE PENALTY WEIGHT [extra --set ...]
    local task=$1 out=$2 probe=$3 penalty=$4 weight=$5
    shift 5
    $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "$out" \
        --set local.probe="$probe" --set local.penalty="$penalty" --set weights.local-random="$weight" "$@"
}

case "${1:-}" in
    digits)
        out=results/study-digits
        vanilla digits $out
        variant digits $out initial error-dt "$PAPER"  # the paper's procedure
        variant digits $out solver error-dt "$PAPER"
        for w in 0.1 0.3; do variant digits $out solver log $w; done
        for w in 2 6; do variant digits $out solver growth $w; done
        for penalty_weight in "error-dt:$PAPER" "log:0.1" "growth:2"; do
            variant digits $out initial-hairer "${penalty_weight%%:*}" "${penalty_weight#*:}" --set local.probe_scale=4
        done
        variant digits $out initial log 0.1
        variant digits $out initial-hairer error-dt "$PAPER"
        # The probes that see the real error need far smaller weights: a scan.
        for w in 0.003 0.01 0.03; do variant digits $out solver log $w; done
        for w in 0.1 0.3 1; do variant digits $out solver growth $w; done
        for w in 0.1 0.3; do variant digits $out solver error-dt $w; done
        # The weight that tunes itself, from a small start.
        variant digits $out solver log "$ADAPTIVE_LOG"
        variant digits $out solver growth "$ADAPTIVE_GROWTH"
        # log EEst amplifies rounding-level EEst: the hinged form ignores probes under EEst = 0.1.
        for w in 0.01 0.03 0.1 0.3; do variant digits $out solver log-hinge $w; done
        variant digits $out solver log-hinge "$ADAPTIVE_LOG"
        ;;
    digits_tight)
        out=results/study-digits-tight
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        vanilla digits $out "${tight[@]}"
        variant digits $out initial error-dt "$PAPER" "${tight[@]}"  # the paper's procedure
        variant digits $out initial-hairer error-dt "$PAPER" "${tight[@]}"
        variant digits $out solver log-hinge 0.01 "${tight[@]}"
        variant digits $out solver error-dt 0.1 "${tight[@]}"
        ;;
    spiral)
        out=results/study-spiral
        vanilla spiral $out
        variant spiral $out initial error-dt "$PAPER"
        variant spiral $out initial-hairer error-dt "$PAPER"
        variant spiral $out solver log-hinge 0.01
        ;;
    tabular)  # held out: never used to choose an option
        out=results/study-tabular
        vanilla tabular $out
        variant tabular $out initial error-dt "$PAPER"
        variant tabular $out initial-hairer error-dt "$PAPER"
        variant tabular $out solver log-hinge 0.01
        ;;
    digits_draws)  # draws per iteration, at the best variant on both axes and the best hinge
        out=results/study-digits
        for n in 2 4; do
            variant digits $out initial-hairer error-dt "$PAPER" --set local.n_draws=$n
            variant digits $out solver log-hinge 0.01 --set local.n_draws=$n
        done
        ;;
    digits_adaptive)  # the self-tuning weight with a target training NFE (about 0.65x vanilla's)
        out=results/study-digits
        target='{"adaptive": 0.01, "target_nfe": 45, "loss_rise": 0.1, "w_min": 0.0001, "w_max": 10.0}'
        variant digits $out solver error-dt "$target"
        variant digits $out initial-hairer error-dt "$target"
        ;;
    spiral_weight)  # the paper's procedure at smaller constant weights
        out=results/study-spiral
        for w in 0.1 0.3; do variant spiral $out initial error-dt $w; done
        ;;
    ratio_tune)  # the weight normalized by the gradient ratio: choose the target on digits at 1e-6 only
        out=results/study-ratio-digits
        vanilla digits $out
        for rho in 0.1 0.3 1 3; do variant digits $out initial error-dt "{\"ratio\": $rho}"; done
        for rho in 0.3 1 3; do variant digits $out initial-hairer error-dt "{\"ratio\": $rho}"; done
        for rho in 0.1 0.3 1; do variant digits $out solver error-dt "{\"ratio\": $rho}"; done
        ;;
    ratio)  # the targets chosen on digits at 1e-6 (1, and 0.3), on every task; tabular is held out
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        vanilla tabular results/study-ratio-tabular
        vanilla spiral results/study-ratio-spiral
        for rho in 1 0.3; do
            for probe in initial initial-hairer; do
                variant tabular results/study-ratio-tabular $probe error-dt "{\"ratio\": $rho}"
                variant spiral results/study-ratio-spiral $probe error-dt "{\"ratio\": $rho}"
            done
        done
        vanilla digits results/study-ratio-digits-tight "${tight[@]}"
        for rho in 1 0.3; do
            for probe in initial initial-hairer; do
                variant digits results/study-ratio-digits-tight $probe error-dt "{\"ratio\": $rho}" "${tight[@]}"
            done
        done
        ;;
    ratio_every)  # the measurement's cost: the weight measured every 10 iterations instead of every one
        every='{"ratio": 1, "every": 10}'
        variant digits results/study-ratio-digits initial-hairer error-dt "$every"
        variant tabular results/study-ratio-tabular initial-hairer error-dt "$every"
        variant spiral results/study-ratio-spiral initial-hairer error-dt "$every"
        variant digits results/study-ratio-digits-tight initial-hairer error-dt "$every" \
            --set solver.rtol=1.4e-8 --set solver.atol=1.4e-8
        ;;
    ratio_reference)  # the paper's procedure beside the ratio rows: the gradient ratio its weight implies
        variant digits results/study-ratio-digits initial error-dt "$PAPER"
        variant digits results/study-ratio-digits-tight initial error-dt "$PAPER" \
            --set solver.rtol=1.4e-8 --set solver.atol=1.4e-8
        ;;
    ratio_tasks)  # ratio 1, measured every 10 iterations, on the tasks the ratio phases above left out
        every='{"ratio": 1, "every": 10}'
        vanilla nsde_digits results/study-ratio-nsde
        # The SDE probe is one Euler-Maruyama step: only the weight applies.
        $LR experiment nsde_digits --methods local-random "${COMMON[@]}" --out results/study-ratio-nsde \
            --set weights.local-random="$every"
        vanilla latent_ode results/study-ratio-latent
        vanilla mnist results/study-ratio-mnist
        for probe in initial-hairer initial; do
            variant latent_ode results/study-ratio-latent $probe error-dt "$every"
            variant mnist results/study-ratio-mnist $probe error-dt "$every"
        done
        ;;
    ratio_targets)  # targets between 1 and 3 (every 10 iterations, initial-hairer) on the four study tasks
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        vanilla digits results/study-ratio-digits
        vanilla digits results/study-ratio-digits-tight "${tight[@]}"
        vanilla tabular results/study-ratio-tabular
        vanilla spiral results/study-ratio-spiral
        for rho in 1.5 2; do
            every="{\"ratio\": $rho, \"every\": 10}"
            variant digits results/study-ratio-digits initial-hairer error-dt "$every"
            variant digits results/study-ratio-digits-tight initial-hairer error-dt "$every" "${tight[@]}"
            variant tabular results/study-ratio-tabular initial-hairer error-dt "$every"
            variant spiral results/study-ratio-spiral initial-hairer error-dt "$every"
        done
        ;;
    ratio_mnist_tight)  # mnist at the paper's tolerance, trained 20 epochs as in the mnist_tight table
        long=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8 --set epochs=20)
        vanilla mnist results/study-ratio-mnist-tight "${long[@]}"
        variant mnist results/study-ratio-mnist-tight initial-hairer error-dt '{"ratio": 1, "every": 10}' "${long[@]}"
        ;;
    ratio_field | ratio_field2)  # ratio 1 (or 2) over the vector field's parameters only (scope "field")
        rho=1
        [ "$1" = ratio_field2 ] && rho=2
        field="{\"ratio\": $rho, \"every\": 10, \"scope\": \"field\"}"
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        $LR experiment nsde_digits --methods local-random "${COMMON[@]}" --out results/study-ratio-nsde \
            --set weights.local-random="$field"
        variant tabular results/study-ratio-tabular initial-hairer error-dt "$field"
        variant spiral results/study-ratio-spiral initial-hairer error-dt "$field"
        variant digits results/study-ratio-digits initial-hairer error-dt "$field"
        variant digits results/study-ratio-digits-tight initial-hairer error-dt "$field" "${tight[@]}"
        variant latent_ode results/study-ratio-latent initial-hairer error-dt "$field"
        variant mnist results/study-ratio-mnist initial-hairer error-dt "$field"
        variant mnist results/study-ratio-mnist-tight initial-hairer error-dt "$field" \
            --set solver.rtol=1.4e-8 --set solver.atol=1.4e-8 --set epochs=20
        ;;
    field_probe | field_every)  # the default's two choices, varied: the paper's probe; measured every iteration
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        if [ "$1" = field_probe ]; then
            probe=initial field='{"ratio": 1, "every": 10, "scope": "field"}'
        else
            probe=initial-hairer field='{"ratio": 1, "every": 1, "scope": "field"}'
        fi
        for task in tabular spiral digits latent_ode mnist; do
            variant $task "results/study-ratio-${task%_ode}" $probe error-dt "$field"
        done
        variant digits results/study-ratio-digits-tight $probe error-dt "$field" "${tight[@]}"
        ;;
    synthetic)  # a task added after the default was chosen: vanilla, the library's default, the paper's procedure
        vanilla synthetic results/study-synthetic
        $LR experiment synthetic --methods local-random "${COMMON[@]}" --out results/study-synthetic \
            "${PREVIOUS_DEFAULT[@]}"
        $LR experiment synthetic --methods local-random "${COMMON[@]}" --out results/study-synthetic
        ;;
    defaults | defaults_mnist_tight)  # LocallyRegularized's own default, the kinetic penalty and its weight (the weight spec "default")
        default=("${PREVIOUS_DEFAULT[@]}")
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        if [ "$1" = defaults ]; then
            $LR experiment nsde_digits --methods local-random "${COMMON[@]}" --out results/study-ratio-nsde "${default[@]}"
            for task in tabular spiral digits latent_ode mnist; do
                folder=results/study-ratio-${task%_ode}
                $LR experiment $task --methods local-random "${COMMON[@]}" --out "$folder" "${default[@]}"
            done
            $LR experiment digits --methods local-random "${COMMON[@]}" --out results/study-ratio-digits-tight \
                "${default[@]}" "${tight[@]}"
        else
            $LR experiment mnist --methods local-random "${COMMON[@]}" --out results/study-ratio-mnist-tight \
                "${default[@]}" "${tight[@]}" --set epochs=20
        fi
        ;;
    probe_float64)  # the previous default (the probe's EEst * |dt|) with its probe in float32 and in float64
        # Its own folders: vanilla beside both, on the six ODE settings of the ratio study.
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        for task_out in spiral:spiral tabular:tabular digits:digits synthetic:synthetic latent_ode:latent \
            digits:digits-tight; do
            task=${task_out%%:*} out=results/study-probe-float64-${task_out#*:} extra=()
            [ "$out" = results/study-probe-float64-digits-tight ] && extra=("${tight[@]}")
            vanilla "$task" "$out" "${extra[@]}"
            $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "$out" \
                "${PREVIOUS_DEFAULT[@]}" "${extra[@]}"
            $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "$out" \
                "${PREVIOUS_DEFAULT[@]}" --set local.probe_dtype=float64 "${extra[@]}"
        done
        ;;
    rnode_ratio)  # RNODE (kinetic energy + Jacobian) with the default's self-tuning weight, field scope
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        ratio='{"ratio": 1, "every": 10, "scope": "field"}'
        for task_out in tabular:study-ratio-tabular digits:study-ratio-digits synthetic:study-synthetic \
            spiral:study-ratio-spiral latent_ode:study-ratio-latent digits:study-ratio-digits-tight; do
            task=${task_out%%:*} out=results/${task_out#*:} extra=()
            [ "$out" = results/study-ratio-digits-tight ] && extra=("${tight[@]}")
            for target in 1 0.1; do
                $LR experiment "$task" --methods rnode "${COMMON[@]}" --out "$out" \
                    --set "weights.rnode=${ratio/\"ratio\": 1,/\"ratio\": $target,}" "${extra[@]}"
            done
        done
        ;;
    kinetic)  # penalty "kinetic" (mean f(t_reg, u)^2, no probe step) with the default weight, and at targets 0.3, 0.1, 0.2
        targets=()
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        for target in 0.3 0.1 0.2; do targets+=("{\"ratio\": $target, \"every\": 10, \"scope\": \"field\"}"); done
        for weight in '{"ratio": 1, "every": 10, "scope": "field"}' "${targets[@]}"; do
            for task_out in tabular:study-ratio-tabular digits:study-ratio-digits synthetic:study-synthetic \
                spiral:study-ratio-spiral latent_ode:study-ratio-latent digits:study-ratio-digits-tight; do
                task=${task_out%%:*} out=results/${task_out#*:} extra=()
                [ "$out" = results/study-ratio-digits-tight ] && extra=("${tight[@]}")
                $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "$out" \
                    --set "weights.local-random=$weight" --set local.penalty=kinetic "${extra[@]}"
            done
            $LR experiment mnist --methods local-random "${COMMON[@]}" --out results/study-ratio-mnist \
                --set "weights.local-random=$weight" --set local.penalty=kinetic
        done
        for weight in "${targets[0]}" "${targets[2]}"; do
            $LR experiment mnist --methods local-random "${COMMON[@]}" --out results/study-ratio-mnist-tight \
                --set "weights.local-random=$weight" --set local.penalty=kinetic \
                --set solver.rtol=1.4e-8 --set solver.atol=1.4e-8 --set epochs=20
        done
        ;;
    kinetic_sde)  # penalty "kinetic" for SDEs (mean drift(t_reg, u)^2) at the default's target 1 and at 0.3, 0.2, 0.1
        vanilla spiral_sde results/study-spiral-sde
        for target in 1 0.3 0.2 0.1; do
            weight="{\"ratio\": $target, \"every\": 10, \"scope\": \"field\"}"
            for task_out in nsde_digits:study-ratio-nsde spiral_sde:study-spiral-sde; do
                $LR experiment "${task_out%%:*}" --methods local-random "${COMMON[@]}" \
                    --out "results/${task_out#*:}" --set "weights.local-random=$weight" --set local.penalty=kinetic
            done
        done
        ;;
    lotka)  # the held-out trajectory fit: vanilla, the previous default, the paper's
        # procedure, the kinetic penalty at 0.2 (the candidate) and 0.1, 0.3, 1; the default (now: 0.1)
        vanilla lotka results/study-lotka
        $LR experiment lotka --methods local-random "${COMMON[@]}" --out results/study-lotka \
            "${PREVIOUS_DEFAULT[@]}"
        $LR experiment lotka --methods local-random "${COMMON[@]}" --out results/study-lotka  # the paper's procedure
        $LR experiment lotka --methods local-random "${COMMON[@]}" --out results/study-lotka \
            --set weights.local-random=default  # the library's default as a user gets it
        for target in 0.2 0.1 0.3 1; do
            $LR experiment lotka --methods local-random "${COMMON[@]}" --out results/study-lotka \
                --set "weights.local-random={\"ratio\": $target, \"every\": 10, \"scope\": \"field\"}" \
                --set local.penalty=kinetic
        done
        ;;
    lotka_long)  # lotka trained for 200 epochs: vanilla, the kinetic penalty at ratio 0.2 and 0.1
        vanilla lotka results/study-lotka-long --set epochs=200
        $LR experiment lotka --methods local-random "${COMMON[@]}" --out results/study-lotka-long --set epochs=200 \
            --set 'weights.local-random={"ratio": 0.2, "every": 10, "scope": "field"}' --set local.penalty=kinetic
        $LR experiment lotka --methods local-random "${COMMON[@]}" --out results/study-lotka-long --set epochs=200 \
            --set 'weights.local-random={"ratio": 0.1, "every": 10, "scope": "field"}' --set local.penalty=kinetic
        ;;
    mnist_long)  # quick mnist (1e-6) trained for 20, 40 and 60 epochs instead of 5: vanilla and the default
        for epochs in 20 40 60; do
            vanilla mnist results/study-mnist-long --set epochs=$epochs
            $LR experiment mnist --methods local-random "${COMMON[@]}" --out results/study-mnist-long \
                --set epochs=$epochs --set weights.local-random=default
        done
        ;;
    target_rule)  # the two held-out tasks of the target rule: vanilla, targets 0.1, 0.2, 0.3, and the default
        for task in "$2"; do
            vanilla "$task" "results/study-$task"
            $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "results/study-$task" \
                --set weights.local-random=default
            for target in 0.1 0.2 0.3; do
                $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "results/study-$task" \
                    --set "weights.local-random={\"ratio\": $target, \"every\": 10, \"scope\": \"field\"}" \
                    --set local.penalty=kinetic
            done
        done
        ;;
    quantiles_long)  # quantiles trained for 100 epochs instead of 30: vanilla and the default
        vanilla quantiles results/study-quantiles-long --set epochs=100
        $LR experiment quantiles --methods local-random "${COMMON[@]}" --out results/study-quantiles-long \
            --set epochs=100 --set weights.local-random=default
        ;;
    long_training)  # vanilla and the default trained 3x the quick epochs: digits (1e-6, 1.4e-8), nsde_digits; latent_ode
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        if [ "${2:-}" = latent_ode ]; then runs=("latent_ode:60:"); else runs=("digits:60:" "digits:60:tight" "nsde_digits:45:"); fi
        for run in "${runs[@]}"; do
            IFS=: read -r task epochs tolerance <<< "$run"
            out=results/study-long-$task${tolerance:+-$tolerance} extra=(--set epochs=$epochs)
            [ -n "$tolerance" ] && extra+=("${tight[@]}")
            vanilla "$task" "$out" "${extra[@]}"
            $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "$out" "${extra[@]}" \
                --set weights.local-random=default
        done
        ;;
    default_gradients)  # the default under the symplectic, backsolve and interpolating adjoints (digits, 1e-6)
        for gradient in symplectic adjoint interpolating_adjoint; do
            $LR experiment digits --methods vanilla local-random "${COMMON[@]}" --out results/study-default-gradients \
                --gradient $gradient --set weights.local-random=default
        done
        ;;
    default_variants)  # the default with sampling "biased", probe_scale 2, n_draws 2, on every quick task but mnist
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        for task_out in digits:study-ratio-digits tabular:study-ratio-tabular synthetic:study-synthetic \
            digits:study-ratio-digits-tight nsde_digits:study-ratio-nsde spiral:study-ratio-spiral \
            latent_ode:study-ratio-latent; do
            task=${task_out%%:*} out=results/${task_out#*:} extra=()
            [ "$out" = results/study-ratio-digits-tight ] && extra=("${tight[@]}")
            $LR experiment "$task" --methods local-biased "${COMMON[@]}" --out "$out" \
                --set weights.local-biased=default --set local.penalty=error-dt "${extra[@]}"
            for option in local.probe_scale=2 local.n_draws=2; do
                $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "$out" \
                    "${PREVIOUS_DEFAULT[@]}" --set "$option" "${extra[@]}"
            done
        done
        ;;
    sde_interp)  # the SDE default reading u(t_reg) from the recorded steps: vanilla and the default
        # (the landing rows: these commands run at commit 6aa00a4, --out results/sde-land-TASK);
        # then nsde_digits trained 45 epochs (the landing rows: long_training)
        for task in nsde_digits spiral_sde; do
            $LR experiment "$task" --methods vanilla local-random "${COMMON[@]}" --out "results/sde-interp-$task" \
                --set weights.local-random=default
        done
        $LR experiment nsde_digits --methods vanilla local-random "${COMMON[@]}" \
            --out results/sde-interp-nsde_digits-long --set epochs=45 --set weights.local-random=default
        ;;
    longer_training)  # vanilla and the default trained longer still: digits (1e-6) 100 epochs, nsde_digits 90
        for run in digits:100 nsde_digits:90; do
            IFS=: read -r task epochs <<< "$run"
            out=results/study-longer-$task
            vanilla "$task" "$out" --set epochs=$epochs
            $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "$out" --set epochs=$epochs \
                --set weights.local-random=default
        done
        ;;
    sde_candidate)  # the held-out SDE classifier nsde_mnist1d: vanilla, the default (kinetic), the candidate
        # SDE default (the probe step's EEst * dt at ratio 1, as PREVIOUS_DEFAULT), the paper's procedure
        vanilla nsde_mnist1d results/study-nsde-mnist1d
        $LR experiment nsde_mnist1d --methods local-random "${COMMON[@]}" --out results/study-nsde-mnist1d \
            --set weights.local-random=default
        $LR experiment nsde_mnist1d --methods local-random "${COMMON[@]}" --out results/study-nsde-mnist1d \
            "${PREVIOUS_DEFAULT[@]}"
        $LR experiment nsde_mnist1d --methods local-random "${COMMON[@]}" --out results/study-nsde-mnist1d
        ;;
    mnist_full)  # mnist at the task's full size (the paper's batch 512 and tolerance 1.4e-8, 30 epochs):
        # vanilla, the default, the paper's procedure
        full=(--seeds 3 --threads 1 --no-progress --out results/mnist-full)
        $LR experiment mnist --methods vanilla "${full[@]}"
        $LR experiment mnist --methods local-random "${full[@]}" --set weights.local-random=default
        $LR experiment mnist --methods local-random "${full[@]}"  # the paper's procedure
        ;;
    held_out_2)  # two tasks added after the default was fixed (mnist1d, vanderpol): vanilla, the
        # default, the paper's procedure; a check, nothing is chosen from it
        for task in mnist1d vanderpol; do
            vanilla "$task" "results/study-$task"
            $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "results/study-$task" \
                --set weights.local-random=default
            $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "results/study-$task"  # the paper's procedure
        done
        ;;
    end_read_floor)  # the default's kinetic penalty and target with RatioWeight's floor=$2, on the settings
        # read at their end; "$3" = long: the longer-training rows instead of the quick ones. beta is
        # spelled out (its default) to tell these rows from those of an earlier floor rule in the same
        # folders (commit d992eed's phase, without the cap; docs/results.md)
        weight="{\"ratio\": 0.2, \"every\": 10, \"beta\": 0.9, \"floor\": $2, \"scope\": \"field\"}"
        tight=(--set solver.rtol=1.4e-8 --set solver.atol=1.4e-8)
        if [ "${3:-}" = long ]; then
            runs=("digits:study-long-digits:60:" "digits:study-long-digits-tight:60:tight" "mnist:study-mnist-long:20:"
                "nsde_digits:study-long-nsde_digits:45:" "quantiles:study-quantiles-long:100:"
                "mnist:study-mnist-long:40:" "nsde_digits:study-longer-nsde_digits:90:"
                "digits:study-longer-digits:100:" "mnist:study-mnist-long:60:")
        else
            runs=("tabular:study-ratio-tabular::" "digits:study-ratio-digits::" "nsde_digits:study-ratio-nsde::"
                "nsde_mnist1d:study-nsde-mnist1d::" "synthetic:study-synthetic::" "quantiles:study-quantiles::"
                "mnist1d:study-mnist1d::" "mnist:study-ratio-mnist::" "digits:study-ratio-digits-tight::tight")
        fi
        for run in "${runs[@]}"; do
            IFS=: read -r task out epochs tolerance <<< "$run"
            extra=()
            [ -n "$epochs" ] && extra+=(--set epochs=$epochs)
            [ -n "$tolerance" ] && extra+=("${tight[@]}")
            $LR experiment "$task" --methods local-random "${COMMON[@]}" --out "results/$out" "${extra[@]}" \
                --set "weights.local-random=$weight" --set local.penalty=kinetic
        done
        ;;
    *)
        echo "usage: $0 digits|digits_tight|spiral|tabular|digits_draws|digits_adaptive|spiral_weight|ratio_tune|ratio|ratio_every|ratio_reference|ratio_tasks|ratio_targets|ratio_mnist_tight|ratio_field|ratio_field2|defaults|defaults_mnist_tight|field_probe|field_every|synthetic|default_variants|probe_float64|rnode_ratio|kinetic|kinetic_sde|lotka|lotka_long|default_gradients|mnist_long|target_rule|quantiles_long|long_training|sde_interp|held_out_2|mnist_full|sde_candidate|longer_training|end_read_floor F [long]" >&2
        exit 2
        ;;
esac
