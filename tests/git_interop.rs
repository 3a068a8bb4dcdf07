//! Stock git as the client of Starling's upload-pack server: `git clone` and
//! `git fetch` through `starling git-upload-pack`.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed (scripts/install-deps.sh installs it)");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn commit_files(work: &Path, count: usize, label: &str) {
    for i in 0..count {
        std::fs::write(
            work.join(format!("{label}-{i}.txt")),
            format!("{label} {i}\n"),
        )
        .unwrap();
        git(work, &["add", "."]);
        git(work, &["commit", "-q", "-m", &format!("{label} {i}")]);
    }
}

#[test]
fn stock_git_clones_and_fetches_through_our_upload_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    commit_files(&work, 3, "first");
    git(tmp.path(), &["clone", "-q", "--bare", "work", "server.git"]);

    let upload_pack = format!("{} git-upload-pack", env!("CARGO_BIN_EXE_starling"));
    let server_url = format!("file://{}", tmp.path().join("server.git").display());
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            "-u",
            &upload_pack,
            &server_url,
            "client.git",
        ],
    );
    let client = tmp.path().join("client.git");
    assert_eq!(
        git(&client, &["rev-parse", "main"]),
        git(&work, &["rev-parse", "main"])
    );

    // An incremental fetch negotiates against what the client has.
    commit_files(&work, 2, "second");
    git(&work, &["push", "-q", "../server.git", "main"]);
    git(
        &client,
        &[
            "fetch",
            "-q",
            "--upload-pack",
            &upload_pack,
            &server_url,
            "+refs/heads/*:refs/heads/*",
        ],
    );
    assert_eq!(
        git(&client, &["rev-parse", "main"]),
        git(&work, &["rev-parse", "main"])
    );
    assert_eq!(git(&client, &["rev-list", "--count", "main"]), "5");
    git(&client, &["fsck", "--strict"]);

    // Up to date: nothing to fetch, still a clean exit on both sides.
    git(
        &client,
        &[
            "fetch",
            "-q",
            "--upload-pack",
            &upload_pack,
            &server_url,
            "+refs/heads/*:refs/heads/*",
        ],
    );
}
