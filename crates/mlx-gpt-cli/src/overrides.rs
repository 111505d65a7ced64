//! nanoGPT-style command lines: `[CONFIG] [--key value | --key=value]…`, where keys are
//! `TrainConfig` fields (dashes or underscores).

use anyhow::bail;

/// `(key, value)` pairs, in command-line order.
pub type Overrides = Vec<(String, String)>;

/// Split raw arguments into the optional config (a preset name or a file) and overrides.
pub fn parse(args: &[String]) -> anyhow::Result<(Option<String>, Overrides)> {
    let mut config = None;
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(flag) = a.strip_prefix("--") {
            if let Some((k, v)) = flag.split_once('=') {
                pairs.push((k.to_string(), v.to_string()));
                i += 1;
            } else {
                let Some(v) = args.get(i + 1) else { bail!("--{flag} needs a value") };
                pairs.push((flag.to_string(), v.clone()));
                i += 2;
            }
        } else if config.is_none() && pairs.is_empty() {
            config = Some(a.clone());
            i += 1;
        } else {
            bail!("unexpected argument '{a}': give the config first, then --key value pairs");
        }
    }
    Ok((config, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_then_pairs() {
        let args: Vec<String> =
            ["baby_shakespeare_char", "--max_iters", "10", "--dropout=0.1"].iter().map(|s| s.to_string()).collect();
        let (c, p) = parse(&args).unwrap();
        assert_eq!(c.as_deref(), Some("baby_shakespeare_char"));
        assert_eq!(p, vec![("max_iters".into(), "10".into()), ("dropout".into(), "0.1".into())]);
        assert!(parse(&["--max_iters".to_string()]).is_err());
        assert!(parse(&["a".to_string(), "--x".into(), "1".into(), "b".into()]).is_err());
    }
}
