//! `mlx-gpt train [CONFIG] [--key value …]`: nanoGPT's `train.py`.

use mlx_gpt_train::train::{run, RunOptions};
use mlx_gpt_train::TrainConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args)]
#[command(after_help = "CONFIG is a preset (train_shakespeare_char, baby_shakespeare_char, modern_shakespeare_char, \
baby_modern_shakespeare_char, train_gpt2, \
finetune_shakespeare, eval_gpt2, eval_gpt2_medium, eval_gpt2_large, eval_gpt2_xl) or a TOML file; \
--key value pairs override it, e.g. `mlx-gpt train baby_shakespeare_char --max_iters 500`. \
Ctrl-C finishes the current step, saves a checkpoint and exits; continue with --init_from resume.")]
pub struct Args {
    /// [CONFIG] [--key value]…
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// Resolve a configuration from raw arguments.
pub fn config(args: &[String]) -> anyhow::Result<TrainConfig> {
    let (base, pairs) = crate::overrides::parse(args)?;
    Ok(TrainConfig::resolve(base.as_deref(), &pairs)?)
}

pub fn run_cmd(args: Args, eval_only: bool) -> anyhow::Result<()> {
    let mut c = config(&args.args)?;
    if eval_only {
        c.eval_only = true;
    }
    // Under `mlx-gpt launch` (or MLX_RANK set by hand) only rank 0 reports.
    let master = std::env::var("MLX_RANK").map_or(true, |r| r.trim() == "0");
    if master {
        println!("# resolved configuration\n{}", c.to_toml());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    crate::signals::on_interrupt(
        move || {
            flag.store(true, Ordering::SeqCst);
            eprintln!(
                "interrupted (Ctrl-C, SIGTERM or SIGHUP): finishing this step, then saving a checkpoint \
                 (interrupt again to abort)"
            );
        },
        || {
            eprintln!("second interrupt: exiting without a checkpoint");
            // _exit, not exit: no static destructors while training threads may still be
            // inside MLX. Finished checkpoints are already complete on disk.
            // SAFETY: _exit only ends the process.
            unsafe { libc::_exit(130) };
        },
    )?;
    let no_dataset = !c.data_dir.join(&c.dataset).join(mlx_gpt_data::token_file::META_FILE).exists();
    if c.eval_only && !c.eval_tasks.is_empty() && no_dataset {
        // `eval` of a task alone (HellaSwag of GPT-2, say) needs no prepared dataset.
        println!("dataset '{}' is not prepared: scoring eval_tasks only", c.dataset);
        print_tasks(&mlx_gpt_train::tasks::run_without_dataset(&c, true)?);
        return Ok(());
    }
    let summary = run(&c, &RunOptions { stop, progress: true })?;
    if summary.interrupted {
        // Not a finished run: say where it stopped, and exit as an interrupted program
        // does (128 + SIGINT), so a script or scheduler does not take it for done.
        if master {
            println!(
                "interrupted at iter {}{}; resume with: mlx-gpt train {} --init_from resume",
                summary.iter,
                summary.checkpoint.as_ref().map(|p| format!(" (checkpoint {})", p.display())).unwrap_or_default(),
                args.args.join(" ")
            );
        }
        std::process::exit(130);
    }
    if !master {
        return Ok(());
    }
    if let Some(l) = summary.last_eval {
        println!(
            "final: iter {}, train loss {:.4}, val loss {:.4}, best val loss {:.4}, {:.1} s",
            summary.iter, l.train, l.val, summary.best_val_loss, summary.wall_s
        );
    }
    if let Some(x) = summary.exact_val {
        let bpb = x.bits_per_byte.map(|b| format!(", {b:.4} bits per byte")).unwrap_or_default();
        println!("exact val loss {:.4}{bpb} over all {} tokens of the val split", x.loss, x.tokens);
    }
    print_tasks(&summary.tasks);
    Ok(())
}

fn print_tasks(tasks: &[mlx_gpt_train::tasks::TaskScore]) {
    for t in tasks {
        println!("{}: acc {:.4}, acc_norm {:.4} over {} examples", t.task, t.score.acc, t.score.acc_norm, t.score.n);
    }
}
