//! A 50 MiB scan attached on A reaches B through the relay R. B, which downloads
//! attachments slowly (`--attachment-rate`, as on a rural line), is killed with SIGKILL
//! about half-way; restarted, it resumes from what it had verified, and the relay sends
//! little more than the file once. Until the file is whole, B's API says how far it has
//! come and refuses to serve it.

use std::time::Duration;

use scenario::{ThreeSites, UNIT_B, wait_for};
use serde_json::json;

const SIZE: usize = 50 << 20;

/// Bytes that do not compress, the same on every run.
fn scan(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_large_attachment_resumes_after_the_receiver_is_killed() {
    let mut sites = ThreeSites::new();
    // 8 MiB/s: about six seconds for the whole file, so "half-way" can be caught.
    sites.b.with_args(&["--attachment-rate", "8192"]);
    sites.start_all();

    let created = sites.a.post(
        "/api/v1/documents",
        &json!({
            "type": "Tờ trình",
            "notation": "TTr-UBND",
            "subject": "Tờ trình phê duyệt hồ sơ đê điều (bản quét)",
            "body": "Kèm theo hồ sơ quét.",
            "audience": [UNIT_B],
        }),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let bytes = scan(SIZE);
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let uploaded = sites
        .a
        .try_upload(
            &format!("/api/v1/documents/{id}/attachments?name=ho-so-de-dieu.pdf"),
            &bytes,
            "application/pdf",
        )
        .unwrap();
    assert_eq!(uploaded.status, 201, "{}", uploaded.body);
    assert_eq!(uploaded.body["attachment"]["hash"], hash.as_str());
    assert_eq!(uploaded.body["attachment"]["size"], SIZE);
    assert_eq!(uploaded.body["attachment"]["status"], "complete");
    // Refused, changing nothing: the same file again (under any name), an empty file, a
    // name with a text-direction override, no name.
    let files = format!("/api/v1/documents/{id}/attachments");
    for (query, body, status) in [
        ("?name=ban-sao.pdf", &bytes[..], 409),
        ("?name=trong.pdf", &b""[..], 400),
        ("?name=a%E2%80%AEfdp.exe", &b"x"[..], 400),
        ("", &b"x"[..], 400),
    ] {
        let r = sites
            .a
            .try_upload(&format!("{files}{query}"), body, "application/pdf")
            .unwrap();
        assert_eq!(r.status, status, "{query}: {}", r.body);
        assert!(r.body["error"].is_string(), "{}", r.body);
    }
    let odd_type = sites
        .a
        .try_upload(&format!("{files}?name=x.pdf"), b"x", "../../etc")
        .unwrap();
    assert_eq!(odd_type.status, 400, "{}", odd_type.body);
    assert_eq!(
        sites.a.get(&files)["attachments"].as_array().unwrap().len(),
        1
    );

    let doc_path = format!("/api/v1/documents/{id}");
    let file_path = format!("{doc_path}/attachments/{hash}");
    let received = |node: &scenario::Process| -> Option<(String, u64)> {
        let r = node.try_get(&doc_path).ok().filter(|r| r.status == 200)?;
        let a = &r.body["attachments"][0];
        Some((a["status"].as_str()?.to_string(), a["received"].as_u64()?))
    };

    // B gets the document at once, and the file as it arrives.
    let mut refused_partial = false;
    let at_kill = wait_for("B to have half the file", Duration::from_secs(120), || {
        let (status, n) = received(&sites.b)?;
        assert_ne!(status, "complete", "B finished before it could be killed");
        if status == "partial" && n > 0 && !refused_partial {
            let (code, body) = sites.b.try_download(&file_path).unwrap();
            assert_eq!(code, 409, "a partial file is not served");
            let text = String::from_utf8_lossy(&body).to_string();
            assert!(text.contains("not here whole yet"), "{text}");
            refused_partial = true;
        }
        (n >= SIZE as u64 / 2).then_some(n)
    });
    sites.b.kill();
    assert!(refused_partial);

    sites.b.start();
    let (status, kept) = received(&sites.b).expect("B answers after its restart");
    assert_eq!(status, "partial");
    assert!(
        kept + (2 << 20) >= at_kill,
        "B kept what it had verified before the kill ({kept} of {at_kill} bytes)"
    );
    wait_for("B to have the whole file", Duration::from_secs(120), || {
        received(&sites.b).filter(|(s, _)| s == "complete")
    });

    let (code, got) = sites.b.try_download(&file_path).unwrap();
    assert_eq!(code, 200);
    assert_eq!(got.len(), SIZE);
    assert_eq!(
        blake3::hash(&got).to_hex().as_str(),
        hash,
        "the file B serves has its hash"
    );

    // Everything B received came from R; R got it from A once.
    let sent = sites.r.metric("cabinet_attachment_bytes_sent_total");
    let resent = sent - SIZE as f64;
    eprintln!(
        "R sent {sent} bytes for a {SIZE}-byte file ({:.1}% more, bao hashes included); B \
         had {kept} verified at its restart",
        100.0 * resent / SIZE as f64
    );
    assert!(
        resent <= 0.10 * SIZE as f64,
        "R re-sent {resent} bytes, more than a tenth of the file"
    );
    assert_eq!(sites.r.metric("cabinet_attachments_completed_total"), 1.0);
}
