//! The 31 real documents (30 resolutions in Markdown, and the list of provinces of
//! dispatch 915/CTK-CSCL as a table) imported into commune A reach commune B of the same
//! cluster through the cluster relay, with identical content and heads; a file that is
//! not a document is refused and changes nothing.

use std::time::Duration;

use scenario::{ThreeSites, UNIT_A, UNIT_B, shared_data, wait_for};

#[test]
fn imported_documents_reach_the_other_commune_through_the_relay() {
    let mut sites = ThreeSites::new();
    let mut files: Vec<String> = std::fs::read_dir(shared_data().join("documents"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("md" | "csv")))
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        31,
        "30 resolutions and the CSV list of provinces"
    );

    // A scan that is not text sits among them, as it would in a clerk's folder.
    let scan = sites.root.path().join("ban-scan.pdf");
    std::fs::write(&scan, b"%PDF-1.7\n\x00\x01\x02\xff binary").unwrap();
    let mut args = vec!["import", "--audience", UNIT_B];
    args.extend(files.iter().map(String::as_str));
    args.push(scan.to_str().unwrap());
    let out = sites.a.run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a refused file makes the import exit non-zero"
    );
    assert!(stdout.contains("31 imported, 1 skipped"), "{stdout}");
    assert!(
        stdout.contains("skipped") && stdout.contains("ban-scan.pdf"),
        "the refusal names the file: {stdout}"
    );

    sites.start_all();
    let on_a = sites.a.documents();
    assert_eq!(on_a.len(), 31);
    wait_for(
        "B to hold the 31 documents",
        Duration::from_secs(60),
        || (sites.b.documents().len() == 31).then_some(()),
    );

    for doc in &on_a {
        let id = doc["id"].as_str().unwrap();
        let on_b = sites.b.get(&format!("/api/v1/documents/{id}"));
        let on_a = sites.a.get(&format!("/api/v1/documents/{id}"));
        assert_eq!(on_b, on_a, "document {id} differs between A and B");
        assert_eq!(
            on_a["body"], doc["body"],
            "the listing shows what GET shows"
        );
        let on_r = sites.r.get(&format!("/api/v1/documents/{id}"));
        assert_eq!(on_r["heads"], doc["heads"]);
        assert_eq!(on_r["audience"], serde_json::json!([UNIT_A, UNIT_B]));
        assert!(
            on_r.get("body").is_none(),
            "a relay lists who a record is for, not its text"
        );
    }

    // The relay's read-only API answers bad requests in the same JSON shape.
    let r = sites
        .r
        .try_raw("POST", "/api/v1/documents", &[], "{}")
        .unwrap();
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(r.body["error"].is_string(), "{}", r.body);
    let r = sites.r.try_get("/api/v1/documents/not-a-uuid").unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body["error"].is_string(), "{}", r.body);

    let ha_tinh = on_a
        .iter()
        .find(|d| d["number"] == "1665")
        .expect("resolution 1665 imported");
    assert_eq!(ha_tinh["notation"], "NQ-UBTVQH15");
    assert_eq!(ha_tinh["type"], "Nghị quyết");
    assert_eq!(ha_tinh["place"], "Hà Nội");
    assert_eq!(ha_tinh["issued_date"], "2025-06-16");
    assert!(
        ha_tinh["subject"]
            .as_str()
            .unwrap()
            .contains("tỉnh Hà Tĩnh"),
        "{}",
        ha_tinh["subject"]
    );

    let provinces = on_a
        .iter()
        .find(|d| d["number"] == "915")
        .expect("the list of provinces imported");
    assert_eq!(provinces["notation"], "CTK-CSCL");
    assert!(
        provinces["body"]
            .as_str()
            .unwrap()
            .contains("18,42,Hà Tĩnh")
    );

    // Search without diacritics finds it on the receiving node too.
    let hits = sites.b.get("/api/v1/documents?q=ha%20tinh");
    assert!(
        hits["documents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["number"] == "1665")
    );
    // Every imported document is found on B by its subject typed without diacritics,
    // with the subject's words marked in its own spelling.
    for doc in &on_a {
        let subject = doc["subject"].as_str().unwrap();
        let words: Vec<String> = without_diacritics(subject)
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(12)
            .map(str::to_string)
            .collect();
        let q = words.join("%20");
        let found = sites.b.get(&format!("/api/v1/documents?q={q}"));
        let hit = found["documents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == doc["id"])
            .unwrap_or_else(|| panic!("{q:?} does not find {subject:?}: {found}"));
        let snippet = hit["search"]["snippets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["field"] == "subject")
            .unwrap_or_else(|| panic!("no subject snippet for {q:?}: {hit}"));
        let text: Vec<char> = snippet["text"].as_str().unwrap().chars().collect();
        let first = &snippet["marks"][0];
        let marked: String = text
            [first[0].as_u64().unwrap() as usize..first[1].as_u64().unwrap() as usize]
            .iter()
            .collect();
        assert_eq!(without_diacritics(&marked), words[0], "{snippet}");
    }

    let status = sites.b.get("/api/v1/status");
    assert_eq!(status["unit"], UNIT_B);
    assert_eq!(status["documents"], 31);
    let peer = &status["peers"][0];
    assert_eq!(peer["id"], sites.r.id.as_str());
    assert_eq!(peer["connected"], true);
    assert!(peer["last_sync"].is_string());
}

/// What a clerk types without Vietnamese diacritics: marks dropped, `đ` as `d`, lower
/// case.
fn without_diacritics(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    s.nfd()
        .filter(|c| !is_combining_mark(*c))
        .map(|c| match c {
            'đ' | 'Đ' => 'd',
            c => c,
        })
        .collect::<String>()
        .to_lowercase()
}
