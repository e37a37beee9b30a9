//! Serialising rulesets and batches the way nft reads them.
//!
//! The `nftables` crate's own serialisation is right except for two key names; this is the one
//! place that knows, and every batch sent to nft and every rendered object compared with nft's
//! listing passes through it.

/// Serialises objects or a batch the way nft reads them. The `nftables` crate names two bridge
/// meta keys after their long forms, which nft 1.0 rejects; this maps them to `ibrname` and
/// `obrname`.
pub fn to_nft_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    fix_meta_keys(&mut v);
    v
}

fn fix_meta_keys(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(meta)) = m.get_mut("meta")
                && let Some(Value::String(key)) = meta.get_mut("key")
            {
                match key.as_str() {
                    "ibridgename" => *key = "ibrname".into(),
                    "obridgename" => *key = "obrname".into(),
                    _ => {}
                }
            }
            m.values_mut().for_each(fix_meta_keys);
        }
        Value::Array(a) => a.iter_mut().for_each(fix_meta_keys),
        _ => {}
    }
}
