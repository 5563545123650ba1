//! The cluster directory: `init_cluster`, saving and loading, refusal to
//! overwrite, and nodes started from files finding each other.

mod common;

use anyhow::Result;
use baton_transport::{init_cluster, ClusterCa, Error, Identity, Node};
use common::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn init_cluster_round_trip() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = dir.path().join("cluster");
    init_cluster(&cluster, &names(&["coordinator", "worker-0", "worker-1"]))?;
    for file in ["ca.pem", "ca.key.pem", "coordinator.pem", "worker-1.key.pem"] {
        assert!(cluster.join(file).is_file(), "{file} missing");
    }
    #[cfg(unix)]
    for key in ["ca.key.pem", "worker-0.key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cluster.join(key))?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key} is readable by others");
    }
    let coordinator = Identity::load(&cluster, "coordinator")?;
    let worker = Identity::load(&cluster, "worker-0")?;
    assert_eq!(worker.name(), "worker-0");

    let server = Node::start(local(), coordinator, fast_config())?;
    let client = Node::start(local(), worker, fast_config())?;
    let (_, name) = client.connect(server.local_addr())?;
    assert_eq!(name, "coordinator");

    // A node added later, from the reloaded CA, joins the same cluster.
    let ca = ClusterCa::load(&cluster)?;
    let late = ca.issue("worker-2")?;
    late.save(&cluster)?;
    let late = Node::start(local(), Identity::load(&cluster, "worker-2")?, fast_config())?;
    assert_eq!(late.connect(server.local_addr())?.1, "coordinator");
    Ok(())
}

#[test]
fn init_cluster_refuses_to_overwrite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    init_cluster(dir.path(), &names(&["coordinator"]))?;
    let before = std::fs::read(dir.path().join("ca.key.pem"))?;
    let err = init_cluster(dir.path(), &names(&["worker-0"])).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("ca.key.pem"))?, before);
    assert!(!dir.path().join("worker-0.pem").exists());

    // Saving an identity from another CA into this directory is refused too.
    let other = ClusterCa::generate("other")?.issue("worker-5")?;
    assert!(matches!(other.save(dir.path()), Err(Error::AlreadyExists { .. })));
    Ok(())
}

#[test]
fn bad_names_and_missing_files_are_clear_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let err = init_cluster(dir.path(), &names(&["worker 0"])).unwrap_err();
    assert!(matches!(err, Error::InvalidName(_)), "{err}");
    let err = init_cluster(dir.path(), &names(&["a", "a"])).unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
    assert!(!dir.path().join("ca.pem").exists(), "nothing is written on error");
    let err = Identity::load(dir.path(), "worker-0").unwrap_err();
    assert!(err.to_string().contains("worker-0.pem"), "{err}");
    std::fs::write(dir.path().join("ca.pem"), "not a pem")?;
    std::fs::write(dir.path().join("ca.key.pem"), "not a pem")?;
    assert!(matches!(ClusterCa::load(dir.path()), Err(Error::Certificate(_))));
    Ok(())
}
