//! Files over HTTP: a tar upload becomes content only the uploading team may name in a
//! submit; a run's files are listed and downloaded by its own team only; hostile
//! archives and oversized uploads get clear errors and store nothing.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::state::RunState;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::api::*;
use support::engine::{Fleet, pending_approval};
use support::*;

fn tar_of(entries: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, kind) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if kind.is_symlink() {
            h.set_link_name("/etc/shadow").unwrap();
        }
        // Written raw: the tar crate itself refuses to build a `..` path.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

async fn upload(c: &Client, body: Vec<u8>, kind: &str) -> (StatusCode, Value) {
    c.send(
        c.request(Method::POST, "/v1/uploads")
            .header("content-type", kind)
            .body(body),
    )
    .await
}

#[tokio::test]
async fn uploaded_files_reach_the_run_of_the_team_that_uploaded_them_only() {
    let pool = pool().await;
    let q = unique_queue("api-files");
    let api = ApiServer::start(&pool, None).await;
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let (a, b) = (
        api.client(Some(TEAM_A_SUBMIT)),
        api.client(Some(TEAM_B_SUBMIT)),
    );
    let readme = format!("# uploaded {}\n", uuid::Uuid::new_v4());
    let archive = tar_of(&[
        ("./docs/", b"", tar::EntryType::Directory),
        (
            "./docs/README.md",
            readme.as_bytes(),
            tar::EntryType::Regular,
        ),
        // The same content twice (empty files are common): stored once.
        ("./a/__init__.py", b"", tar::EntryType::Regular),
        ("./b/__init__.py", b"", tar::EntryType::Regular),
    ]);
    let (s, up) = upload(&a, archive, "application/x-tar").await;
    assert_eq!(s, StatusCode::CREATED, "{up}");
    let sha = up["files"]["docs/README.md"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(sha, phasefleet::workflow::sha256_hex(readme.as_bytes()));
    assert_eq!(
        up["files"]["a/__init__.py"]["sha256"],
        up["files"]["b/__init__.py"]["sha256"]
    );

    let mut body = example_body(&q, json!({}));
    body["files"] =
        json!({ "docs/README.md": { "sha256": sha }, "inline.txt": "typed in the request" });
    let (s, created) = a.post("/v1/runs", &body).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let run = created["run_id"].as_str().unwrap().to_owned();
    // Another team cannot name content it did not upload, even knowing its digest.
    let (s, refused) = b.post("/v1/runs", &body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(
        refused["error"]["field"], "files.docs/README.md",
        "{refused}"
    );

    let approve = api.client(Some(TEAM_A_APPROVE));
    let run_id = phasefleet::RunId(run.parse().unwrap());
    let approval = pending_approval(&pool, run_id).await;
    let (s, _) = approve
        .post(
            &format!("/v1/approvals/{approval}/decision"),
            &json!({ "action": "approve" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        support::engine::drive(&pool, run_id).await,
        RunState::Completed
    );
    fleet.shutdown().await;

    let (s, files) = a.get(&format!("/v1/runs/{run}/files")).await;
    assert_eq!(s, StatusCode::OK);
    let paths: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["origin"] == "")
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["docs/README.md", "inline.txt"]);
    let res = a
        .request(Method::GET, &format!("/v1/runs/{run}/files/docs/README.md"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename=\"README.md\""
    );
    assert_eq!(res.text().await.unwrap(), readme);
    let (s, _) = b.get(&format!("/v1/runs/{run}/files")).await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "another team's run files are not found"
    );
    let (s, _) = b.get(&format!("/v1/runs/{run}/files/docs/README.md")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, art) = a
        .get(&format!("/v1/runs/{run}/phases/review/artifact"))
        .await;
    assert_eq!(
        (s, art["artifact"]["valid"].clone()),
        (StatusCode::OK, json!(true))
    );
    api.shutdown().await;
}

#[tokio::test]
async fn hostile_uploads_are_refused_with_a_clear_error() {
    let pool = pool().await;
    let api = ApiServer::start(&pool, None).await;
    let a = api.client(Some(TEAM_A_SUBMIT));
    let read = api.client(Some(READ));
    let cases: Vec<(Vec<u8>, &str, StatusCode, &str)> = vec![
        (
            tar_of(&[("escape", b"", tar::EntryType::Symlink)]),
            "application/x-tar",
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a regular file",
        ),
        (
            tar_of(&[(
                "../../etc/cron.d/x",
                b"* * * * * root id",
                tar::EntryType::Regular,
            )]),
            "application/x-tar",
            StatusCode::UNPROCESSABLE_ENTITY,
            "climbs out of the workspace",
        ),
        (
            tar_of(&[(
                "big.bin",
                &vec![0u8; 1024 * 1024 + 1],
                tar::EntryType::Regular,
            )]),
            "application/x-tar",
            StatusCode::UNPROCESSABLE_ENTITY,
            "big.bin",
        ),
        (
            b"{}".to_vec(),
            "application/json",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "tar",
        ),
        (
            vec![0u8; 30 * 1024 * 1024],
            "application/x-tar",
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
    ];
    for (body, kind, status, says) in cases {
        let (s, answer) = upload(&a, body, kind).await;
        assert_eq!(s, status, "{answer}");
        assert!(answer.to_string().contains(says), "{answer}");
    }
    let (s, _) = upload(&read, tar_of(&[]), "application/x-tar").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "uploading needs the submit role");
    api.shutdown().await;
}
