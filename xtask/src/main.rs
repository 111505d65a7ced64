//! `cargo xtask <task>`: project chores (dataset and GPT-2 downloads arrive with the data
//! issue). Thin on purpose: the logic lives in mlx-gpt-data so other programs can call it.

fn main() {
    let task = std::env::args().nth(1);
    eprintln!(
        "xtask: {} is not available yet; tasks arrive with the data issue",
        task.as_deref().unwrap_or("(no task)")
    );
    std::process::exit(2);
}
