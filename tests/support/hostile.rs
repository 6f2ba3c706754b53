//! Config files an attacker could write (a ConfigMap, a shared repository): the shapes the
//! security probe used against `check` and the reloader.

/// `levels` anchors of `width` aliases of the one before ("billion laughs"), padded with
/// a comment line to exactly `bytes`. `(10, 10, 540)` and `(7, 12, 384)` are the probe's
/// 540-byte file and its 384-byte variant.
pub fn alias_bomb(levels: usize, width: usize, bytes: usize) -> String {
    let names: Vec<char> = ('a'..='z').take(levels).collect();
    let mut body = format!("a: &a [{}]\n", vec!["\"lol\""; width].join(","));
    for pair in names.windows(2) {
        let refs = vec![format!("*{}", pair[0]); width].join(",");
        body.push_str(&format!("{0}: &{0} [{refs}]\n", pair[1]));
    }
    let comment = format!("# {levels} levels of {width} aliases ");
    let pad = bytes - body.len() - comment.len() - 1;
    let text = format!("{comment}{}\n{body}", "x".repeat(pad));
    assert_eq!(text.len(), bytes);
    text
}

/// `depth` block sequences nested on one line (`- - - … x`): 10 KB at 5,000.
pub fn nested_lists(depth: usize) -> String {
    format!("{}x\n", "- ".repeat(depth))
}

/// Creates a FIFO (named pipe) at `path`.
pub fn mkfifo(path: &std::path::Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo(3) reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
}
