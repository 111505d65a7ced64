//! Checkpoints: `out_dir/checkpoints/iter-NNNNNNN/` holding the weights in Hugging Face
//! GPT-2 layout (`model.safetensors`, `config.json`), the optimizer moments
//! (`optimizer.safetensors`), and `state.json` (iteration, best val loss, model and
//! training configuration, batch-sampler state, tokenizer), then a `DONE` marker.
//!
//! A checkpoint is written into a temporary folder and renamed into place only once whole,
//! so a crash or kill at any moment leaves the previous checkpoints usable; folders without
//! `DONE` are ignored. The newest complete checkpoint is the one `resume` loads; the oldest
//! beyond `keep_last` are deleted after a new one is in place.

use crate::config::TrainConfig;
use crate::optimizer::{AdamW, AdamWConfig};
use crate::TrainError;
use mlx_gpt_data::batches::SamplerState;
use mlx_gpt_data::tokenizer::TokenizerSpec;
use mlx_gpt_model::{hf, Gpt, GptConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layout version of `state.json`.
pub const STATE_VERSION: u32 = 1;

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Layout version.
    pub version: u32,
    /// Optimizer steps completed.
    pub iter: usize,
    /// Best validation loss seen.
    pub best_val_loss: f64,
    /// The model's shape.
    pub model: GptConfig,
    /// The training configuration of the run that wrote it.
    pub train: TrainConfig,
    /// Processes that trained (1 without distribution).
    pub world_size: usize,
    /// Where each rank's training batch sampler stood, in rank order.
    pub samplers: Vec<SamplerState>,
    /// The dataset's tokenizer, for sampling.
    pub tokenizer: TokenizerSpec,
}

/// The folder of checkpoints inside a run directory.
pub fn checkpoints_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("checkpoints")
}

/// The folder of iteration `iter`'s checkpoint.
pub fn dir_of(out_dir: &Path, iter: usize) -> PathBuf {
    checkpoints_dir(out_dir).join(format!("iter-{iter:07}"))
}

/// Complete checkpoints in `out_dir`, oldest first.
pub fn list(out_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(checkpoints_dir(out_dir))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let iter = p.file_name()?.to_str()?.strip_prefix("iter-")?.parse().ok()?;
            p.join("DONE").is_file().then_some((iter, p))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint.
pub fn latest(out_dir: &Path) -> Option<PathBuf> {
    list(out_dir).pop().map(|(_, p)| p)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.into(), source }
}

/// Write a checkpoint of iteration `state.iter`; returns its folder.
pub fn save(out_dir: &Path, model: &Gpt, opt: &AdamW, state: &TrainState) -> Result<PathBuf, TrainError> {
    save_observed(out_dir, model, opt, state, &|_| ())
}

/// [`save`], calling `after` with a name for each filesystem step once it is done. The
/// tests make `after` panic at each step in turn, which stops the save there exactly as a
/// kill would (no clean-up runs), and check that nothing complete is lost.
fn save_observed(
    out_dir: &Path,
    model: &Gpt,
    opt: &AdamW,
    state: &TrainState,
    after: &dyn Fn(&str),
) -> Result<PathBuf, TrainError> {
    let root = checkpoints_dir(out_dir);
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let dest = dir_of(out_dir, state.iter);
    let name = dest.file_name().expect("iter-N").to_string_lossy().into_owned();
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    after("temporary folder created");
    if let Err(e) = write_into(&tmp, model, opt, state, after) {
        // A failed save (a full disk, say) leaves no half-written folder taking space.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    replace_dir(&tmp, &dest, after)?;
    Ok(dest)
}

/// Every file of a checkpoint into `tmp`, DONE last.
fn write_into(
    tmp: &Path,
    model: &Gpt,
    opt: &AdamW,
    state: &TrainState,
    after: &dyn Fn(&str),
) -> Result<(), TrainError> {
    hf::save_pretrained(model, tmp)?;
    after("weights written");
    let opt_path = tmp.join("optimizer.safetensors");
    opt.save(&opt_path).map_err(|what| TrainError::Checkpoint { path: opt_path.clone(), what })?;
    after("optimizer written");
    // safetensors creates its file readable by the owner only; the checkpoint's other
    // files follow the umask (0644 as a rule). Give it theirs.
    let mode = std::fs::metadata(tmp.join("model.safetensors")).map_err(io(tmp))?.permissions();
    std::fs::set_permissions(&opt_path, mode).map_err(io(&opt_path))?;
    let state_path = tmp.join("state.json");
    std::fs::write(&state_path, serde_json::to_string_pretty(state).expect("state serializes"))
        .map_err(io(&state_path))?;
    after("state written");
    // Make the contents durable before DONE vouches for them, and DONE before the rename.
    for f in CHECKSUMMED {
        std::fs::File::open(tmp.join(f)).and_then(|f| f.sync_all()).map_err(io(tmp))?;
    }
    after("files synced");
    // DONE vouches for the files: it holds their sha256, checked on every load.
    let mut sums = BTreeMap::new();
    for f in CHECKSUMMED {
        sums.insert(f.to_string(), mlx_gpt_data::token_file::sha256_file(&tmp.join(f))?);
    }
    let done = tmp.join("DONE");
    let text = serde_json::to_string_pretty(&Done { iter: state.iter, sha256: sums }).expect("serializes");
    // Through a temporary name: a kill mid-write leaves no empty or partial DONE.
    let partial = tmp.join("DONE.partial");
    std::fs::write(&partial, text)
        .and_then(|_| std::fs::File::open(&partial)?.sync_all())
        .and_then(|_| std::fs::rename(&partial, &done))
        .map_err(io(&done))?;
    after("DONE written");
    Ok(())
}

/// The files of a checkpoint whose sha256 `DONE` records.
const CHECKSUMMED: [&str; 4] = ["model.safetensors", "config.json", "state.json", "optimizer.safetensors"];

/// Those a model is evaluated or sampled from: all but the optimizer's.
pub const MODEL_FILES: [&str; 3] = ["model.safetensors", "config.json", "state.json"];

/// `DONE`: the iteration and each file's sha256. (Checkpoints written before checksums
/// hold only the iteration; they load without the check.)
#[derive(Serialize, Deserialize)]
struct Done {
    iter: usize,
    sha256: BTreeMap<String, String>,
}

/// Check the files of checkpoint `dir` against the sha256 sums in its `DONE`, those in
/// `files` only (sampling needs no optimizer state). A checkpoint from before checksums
/// passes.
pub fn verify(dir: &Path, files: &[&str]) -> Result<(), TrainError> {
    let done_path = dir.join("DONE");
    let text = std::fs::read_to_string(&done_path).map_err(io(&done_path))?;
    if text.trim().parse::<usize>().is_ok() {
        return Ok(()); // written before checksums: the iteration alone
    }
    let done = serde_json::from_str::<Done>(&text).map_err(|e| TrainError::Checkpoint {
        path: done_path.clone(),
        what: format!("is not a valid DONE marker ({e})"),
    })?;
    for f in files {
        let Some(want) = done.sha256.get(*f) else { continue };
        let path = dir.join(f);
        let got = mlx_gpt_data::token_file::sha256_file(&path)?;
        if &got != want {
            return Err(TrainError::Checkpoint {
                path: path.clone(),
                what: format!("its contents changed after it was written (sha256 {got}, DONE records {want})"),
            });
        }
    }
    Ok(())
}

/// Put the folder `new` in place of `dest`, never deleting `dest` before `new` is there:
/// an existing `dest` is renamed aside first, and removed only after `new` took its name.
/// A kill between the renames leaves the old checkpoint aside (`.iter-N.old-PID`, whole,
/// with its DONE) and the new one under its temporary name; [`list`] then finds neither
/// under `iter-N`, and the older checkpoints are untouched.
fn replace_dir(new: &Path, dest: &Path, after: &dyn Fn(&str)) -> Result<(), TrainError> {
    let name = dest.file_name().expect("a checkpoint name").to_string_lossy().into_owned();
    let aside = dest.with_file_name(format!(".{name}.old-{}", std::process::id()));
    let moved = if dest.exists() {
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(dest, &aside).map_err(io(dest))?;
        after("old one set aside");
        true
    } else {
        false
    };
    if let Err(e) = std::fs::rename(new, dest) {
        if moved {
            // Put the old one back where it was.
            let _ = std::fs::rename(&aside, dest);
        }
        return Err(io(dest)(e));
    }
    after("new one in place");
    if moved {
        remove_checkpoint(&aside, after)?;
    }
    Ok(())
}

/// Delete a checkpoint folder, `DONE` first: a kill part-way through removing the rest
/// leaves a folder no one takes for a checkpoint (no `DONE`), never one that vouches for
/// files already gone.
fn remove_checkpoint(dir: &Path, after: &dyn Fn(&str)) -> Result<(), TrainError> {
    let done = dir.join("DONE");
    match std::fs::remove_file(&done) {
        Ok(()) => after("a DONE removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&done)(e)),
    }
    std::fs::remove_dir_all(dir).map_err(io(dir))?;
    after("a folder removed");
    Ok(())
}

/// Delete the oldest complete checkpoints beyond `keep`, and abandoned folders (of saves
/// or deletions that did not finish).
pub fn prune(out_dir: &Path, keep: usize) -> Result<(), TrainError> {
    prune_observed(out_dir, keep, &|_| ())
}

fn prune_observed(out_dir: &Path, keep: usize, after: &dyn Fn(&str)) -> Result<(), TrainError> {
    let all = list(out_dir);
    let keep = keep.max(1);
    for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
        remove_checkpoint(p, after)?;
    }
    // Left-overs: temporary folders of saves that did not finish, and `iter-N` folders
    // without DONE (a deletion that did not finish; a save never leaves one, it renames
    // only complete folders into place). The caller holds the run directory's lock
    // (crate::lock) and has run `recover`, so none belongs to a live save.
    for e in std::fs::read_dir(checkpoints_dir(out_dir)).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(".iter-") || (n.starts_with("iter-") && !e.path().join("DONE").exists()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// Undo what a save killed between its renames left behind (`replace_dir`): where
/// `iter-N` is missing, a complete temporary folder `.iter-N.tmp-*` (it has DONE) takes
/// its place, else the old one set aside, `.iter-N.old-*`, goes back. Returns a note for
/// each folder put back. Call it holding the run directory's lock, before `prune`.
pub fn recover(out_dir: &Path) -> Result<Vec<String>, TrainError> {
    let root = checkpoints_dir(out_dir);
    let mut aside: Vec<PathBuf> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".iter-")))
        .collect();
    // Complete new ones before old ones: the newer save wins.
    aside.sort_by_key(|p| (!p.file_name().is_some_and(|n| n.to_string_lossy().contains(".tmp-")), p.clone()));
    let mut notes = Vec::new();
    for p in aside {
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(name) =
            n.strip_prefix('.').and_then(|n| n.split_once(".tmp-").or_else(|| n.split_once(".old-"))).map(|(a, _)| a)
        else {
            continue;
        };
        let dest = root.join(name);
        if dest.exists() || !p.join("DONE").is_file() {
            continue;
        }
        std::fs::rename(&p, &dest).map_err(io(&dest))?;
        notes.push(format!("put back {} as {} (a save had stopped between its renames)", p.display(), dest.display()));
    }
    Ok(notes)
}

/// Checkpoints passed over as damaged: each folder and why.
pub type Skipped = Vec<(PathBuf, TrainError)>;

/// Load the newest complete checkpoint of `out_dir` that loads (without the optimizer's
/// file unless `with_optimizer`), skipping damaged newer ones; returns what was loaded
/// and, for each one skipped, its folder and why. When none loads, the newest one's error.
pub fn load_latest_valid(
    out_dir: &Path,
    adamw: AdamWConfig,
    with_optimizer: bool,
) -> Result<(PathBuf, Loaded, Skipped), TrainError> {
    let mut skipped = Vec::new();
    for (_, dir) in list(out_dir).into_iter().rev() {
        match load_parts(&dir, adamw, with_optimizer) {
            Ok(loaded) => return Ok((dir, loaded, skipped)),
            // Damage in the checkpoint's own files: try the next older one.
            Err(e) if is_damage(&e) => skipped.push((dir, e)),
            // Anything else (no permission, out of memory, ...) would be the same for an
            // older one, or must not be silently passed over.
            Err(e) => return Err(e),
        }
    }
    match skipped.into_iter().next() {
        Some((_, newest)) => Err(newest),
        None => Err(TrainError::NoCheckpoint { out_dir: out_dir.into() }),
    }
}

/// Whether a load error is damage to the checkpoint's files (worth an older one).
fn is_damage(e: &TrainError) -> bool {
    use std::io::ErrorKind::{InvalidData, NotFound, UnexpectedEof};
    match e {
        TrainError::Checkpoint { .. } | TrainError::Weights(_) => true,
        TrainError::Io { source, .. } | TrainError::Data(mlx_gpt_data::DataError::Io { source, .. }) => {
            matches!(source.kind(), NotFound | InvalidData | UnexpectedEof)
        }
        _ => false,
    }
}

/// What a checkpoint restores.
pub struct Loaded {
    /// The model, with the checkpoint's weights.
    pub model: Gpt,
    /// The optimizer with its moments and step count.
    pub optimizer: AdamW,
    /// `state.json`.
    pub state: TrainState,
}

/// Load a checkpoint folder, strictly: every file must be present and consistent.
pub fn load(dir: &Path, adamw: AdamWConfig) -> Result<Loaded, TrainError> {
    load_parts(dir, adamw, true)
}

/// Load what evaluating and sampling need: the weights and `state.json`, without the
/// optimizer's file (the optimizer comes back fresh).
pub fn load_for_eval(dir: &Path, adamw: AdamWConfig) -> Result<Loaded, TrainError> {
    load_parts(dir, adamw, false)
}

fn load_parts(dir: &Path, adamw: AdamWConfig, with_optimizer: bool) -> Result<Loaded, TrainError> {
    let damaged = |what: String| TrainError::Checkpoint { path: dir.into(), what };
    if !dir.join("DONE").is_file() {
        return Err(damaged("incomplete (no DONE marker): it was being written when the run stopped".into()));
    }
    verify(dir, if with_optimizer { &CHECKSUMMED[..] } else { &MODEL_FILES[..] })?;
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| damaged(format!("state.json is not valid: {e}")))?;
    if state.version != STATE_VERSION {
        return Err(damaged(format!("state.json version {} (expected {STATE_VERSION})", state.version)));
    }
    if state.world_size == 0 || state.samplers.len() != state.world_size {
        return Err(damaged(format!(
            "state.json holds {} batch-sampler states for a world size of {}",
            state.samplers.len(),
            state.world_size
        )));
    }
    let model = hf::load_pretrained(dir).map_err(|e| damaged(format!("weights: {e}")))?;
    if model.config != state.model {
        return Err(damaged("config.json and state.json describe different models".into()));
    }
    if !with_optimizer {
        return Ok(Loaded { model, optimizer: AdamW::new(adamw), state });
    }
    let shapes: BTreeMap<String, Vec<i32>> = {
        use mlx_rs::module::ModuleParameters;
        model.parameters().flatten().iter().map(|(k, v)| (k.to_string(), v.shape().to_vec())).collect()
    };
    let opt_path = dir.join("optimizer.safetensors");
    let optimizer = AdamW::load(&opt_path, adamw, &shapes).map_err(|e| match e {
        // Not the checkpoint's fault (permissions, a failing disk): said as it is, and the
        // checkpoint is not taken for damaged.
        crate::optimizer::StateError::Io(source) => TrainError::Io { path: opt_path.clone(), source },
        crate::optimizer::StateError::Invalid(why) => damaged(format!("optimizer.safetensors: {why}")),
    })?;
    Ok(Loaded { model, optimizer, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADAMW: AdamWConfig = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        muon: None,
        embedding_lr_ratio: 1.0,
        head_lr_ratio: 1.0,
    };

    #[test]
    fn replacing_a_checkpoint_never_deletes_it_first() {
        let root = std::env::temp_dir().join(format!("mlx-gpt-replace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (dest, new) = (root.join("iter-0000010"), root.join(".iter-0000010.tmp-1"));
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("DONE"), "old").unwrap();
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("DONE"), "new").unwrap();
        replace_dir(&new, &dest, &|_| ()).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("DONE")).unwrap(), "new");
        assert!(!new.exists());
        // Nothing left aside.
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
        // A rename that fails puts the old folder back.
        let missing = root.join(".iter-0000010.tmp-2");
        assert!(replace_dir(&missing, &dest, &|_| ()).is_err());
        assert_eq!(std::fs::read_to_string(dest.join("DONE")).unwrap(), "new");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A save of a tiny model at `iter`, marked by `best_val_loss = mark`.
    fn state(iter: usize, mark: f64) -> (Gpt, AdamW, TrainState) {
        let model = GptConfig { block_size: 8, n_layer: 1, n_head: 2, n_embd: 16, ..GptConfig::baby(11) };
        let state = TrainState {
            version: STATE_VERSION,
            iter,
            best_val_loss: mark,
            model: model.clone(),
            train: TrainConfig::default(),
            world_size: 1,
            samplers: vec![mlx_gpt_data::batches::SamplerState {
                seed: 1,
                order: Default::default(),
                rng: 2,
                epoch: 0,
                cursor: 0,
            }],
            tokenizer: TokenizerSpec::Char { itos: "abcdefghijk".chars().collect() },
        };
        (Gpt::new(model, iter as u64).unwrap(), AdamW::new(ADAMW), state)
    }

    /// Fault injection: a save and its prune stopped after each filesystem step in turn (a
    /// panic skips every clean-up, as a kill does). After a restart (`recover`, then
    /// `prune`), the newest complete checkpoint always loads, checksums and all: the one
    /// being written, or the one before it; never an older one, never none.
    #[test]
    fn a_kill_at_any_step_of_a_save_loses_no_complete_checkpoint() {
        let out = std::env::temp_dir().join(format!("mlx-gpt-faults-{}", std::process::id()));
        // (the iteration saved, what is there before it, keep_last)
        let cases: [(usize, &[usize], usize); 3] = [(30, &[10, 20], 2), (20, &[10, 20], 2), (30, &[20], 1)];
        for (iter, before, keep) in cases {
            let steps = std::cell::RefCell::new(Vec::new());
            let mut k = 0;
            loop {
                let _ = std::fs::remove_dir_all(&out);
                for &b in before {
                    let (m, o, s) = state(b, b as f64);
                    save(&out, &m, &o, &s).unwrap();
                }
                let (m, o, s) = state(iter, 1000.0 + iter as f64);
                let count = std::cell::Cell::new(0);
                let stop = |what: &str| {
                    if k == 0 {
                        steps.borrow_mut().push(what.to_string());
                    }
                    count.set(count.get() + 1);
                    if k > 0 && count.get() == k {
                        panic!("killed after {what}");
                    }
                };
                let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    save_observed(&out, &m, &o, &s, &stop).unwrap();
                    prune_observed(&out, keep, &stop).unwrap();
                }))
                .is_err();
                let at = if k == 0 { "nowhere".to_string() } else { steps.borrow()[k - 1].clone() };
                assert_eq!(killed, k > 0, "case {iter} {before:?}: killed after {at}");
                // The restart. Whatever looks complete right away is complete.
                recover(&out).unwrap();
                for (_, d) in list(&out) {
                    load(&d, ADAMW).unwrap_or_else(|e| panic!("case {iter} {before:?}, killed after {at}: {e}"));
                }
                prune(&out, keep).unwrap();
                let (dir, loaded, skipped) = load_latest_valid(&out, ADAMW, true)
                    .unwrap_or_else(|e| panic!("case {iter} {before:?}, killed after {at}: nothing loads: {e}"));
                assert!(skipped.is_empty(), "case {iter} {before:?}, killed after {at}: skipped {:?}", skipped[0]);
                let newest_before = *before.last().unwrap();
                let got = (loaded.state.iter, loaded.state.best_val_loss);
                let new = (iter, 1000.0 + iter as f64);
                let old = (newest_before, newest_before as f64);
                assert!(
                    got == new || got == old,
                    "case {iter} {before:?}, killed after {at}: loaded {got:?} from {dir:?}"
                );
                // Only complete checkpoints are left, every one loads, and no more than kept.
                let left: Vec<String> = std::fs::read_dir(checkpoints_dir(&out))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                assert!(left.len() <= keep, "case {iter} {before:?}, killed after {at}: {left:?}");
                for (_, d) in list(&out) {
                    load(&d, ADAMW).unwrap();
                }
                assert_eq!(list(&out).len(), left.len(), "case {iter} {before:?}, killed after {at}: {left:?}");
                k += 1;
                if k > steps.borrow().len() {
                    break;
                }
            }
            // Every step of the save and of the prune was tried.
            let steps = steps.into_inner();
            for s in ["temporary folder created", "weights written", "DONE written", "new one in place"] {
                assert!(steps.iter().any(|t| t == s), "{s} not among {steps:?}");
            }
            if before.contains(&iter) {
                assert!(steps.iter().any(|t| t == "old one set aside"), "{steps:?}");
            }
            if before.len() + usize::from(!before.contains(&iter)) > keep {
                assert!(steps.iter().any(|t| t == "a DONE removed"), "{steps:?}");
            }
        }
        std::fs::remove_dir_all(&out).unwrap();
    }

    /// The states a kill inside `replace_dir` can leave, and what `recover` makes of them.
    #[test]
    fn a_save_killed_between_its_renames_is_put_back() {
        let out = std::env::temp_dir().join(format!("mlx-gpt-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let root = checkpoints_dir(&out);
        let folder = |name: &str, done: Option<&str>| {
            std::fs::create_dir_all(root.join(name)).unwrap();
            if let Some(d) = done {
                std::fs::write(root.join(name).join("DONE"), d).unwrap();
            }
        };
        // Killed after setting the old one aside, before the new one took its name: the
        // complete new one wins.
        folder(".iter-0000020.old-7", Some("old"));
        folder(".iter-0000020.tmp-7", Some("new"));
        // Killed while writing (no DONE) after the old one was set aside: the old one returns.
        folder(".iter-0000030.old-7", Some("old"));
        folder(".iter-0000030.tmp-7", None);
        // A complete checkpoint and a half-written next one: left for prune.
        folder("iter-0000010", Some("10"));
        folder(".iter-0000040.tmp-7", None);
        let notes = recover(&out).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(std::fs::read_to_string(root.join("iter-0000020/DONE")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(root.join("iter-0000030/DONE")).unwrap(), "old");
        assert_eq!(list(&out).iter().map(|c| c.0).collect::<Vec<_>>(), vec![10, 20, 30]);
        prune(&out, 10).unwrap();
        let left: Vec<String> =
            std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(left.iter().all(|n| n.starts_with("iter-")), "{left:?}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
