//! A one-file ustar archive: the format Docker's archive upload takes, for copying the agent
//! into a container without a tar dependency.

/// `name` (relative, at most 100 bytes) with `mode`, owned by root, followed by the end marker.
pub fn one_file(name: &str, mode: u32, data: &[u8]) -> Result<Vec<u8>, String> {
    if name.len() > 100 || name.is_empty() || name.starts_with('/') {
        return Err(format!("tar: bad member name {name:?}"));
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{:0w$o}\0", v, w = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if data.len() as u64 >= 0o77777777777 {
        return Err("tar: member too large".into());
    }
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    let mut out = Vec::with_capacity(512 + data.len() + 1536);
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_tar_reads_it_back() {
        let Ok(tar) = one_file("usr/lib/berth/x", 0o755, b"hello\n") else {
            panic!("archive");
        };
        assert_eq!(tar.len() % 512, 0);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.tar");
        std::fs::write(&p, &tar).unwrap_or_else(|e| panic!("{e}"));
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&p)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(listing.contains("-rwxr-xr-x"), "{listing}");
        assert!(listing.contains("usr/lib/berth/x"), "{listing}");
        assert!(one_file("/abs", 0o755, b"").is_err());
    }
}
