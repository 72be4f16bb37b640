use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::*;

fn meta(name: &str, owner_uid: Option<&str>, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("ns".into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        annotations: Some([(SPEC_HASH_ANNOTATION.to_string(), format!("hash-{name}"))].into()),
        owner_references: owner_uid.map(|uid| {
            vec![OwnerReference {
                api_version: "modelfleet.dev/v1alpha1".into(),
                kind: "ModelDeployment".into(),
                name: "m".into(),
                uid: uid.into(),
                controller: Some(true),
                ..Default::default()
            }]
        }),
        ..Default::default()
    }
}

fn deployment(name: &str, uid: &str, revision: &str) -> Deployment {
    Deployment {
        metadata: meta(
            name,
            Some(uid),
            &[(labels::DEPLOYMENT, "m"), (labels::REVISION, revision)],
        ),
        ..Default::default()
    }
}

fn service(name: &str, uid: &str) -> Service {
    Service {
        metadata: meta(name, Some(uid), &[(labels::DEPLOYMENT, "m")]),
        ..Default::default()
    }
}

fn pod(name: &str) -> Pod {
    Pod {
        metadata: meta(name, None, &[(labels::DEPLOYMENT, "m")]),
        ..Default::default()
    }
}

#[test]
fn children_are_found_by_their_owner_uid_and_a_re_created_object_sees_none_of_the_old_ones() {
    let index = Index::default();
    index.apply(&watcher::Event::Apply(deployment("m-a", "uid-old", "a")));
    index.apply(&watcher::Event::Apply(service("m", "uid-old")));
    index.apply(&watcher::Event::Apply(service("other", "uid-other")));
    let old = index.observe("uid-old", "ns", "m");
    assert_eq!(
        old.revisions
            .iter()
            .map(|r| r.revision.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(
        old.applied.keys().collect::<Vec<_>>(),
        ["Deployment/m-a", "Service/m"],
        "only this owner's children"
    );
    let recreated = index.observe("uid-new", "ns", "m");
    assert!(
        recreated.revisions.is_empty() && recreated.applied.is_empty(),
        "{recreated:?}"
    );
}

#[test]
fn deletes_and_relists_keep_the_index_true() {
    let index = Index::default();
    index.apply(&watcher::Event::Apply(deployment("m-a", "u", "a")));
    index.apply(&watcher::Event::Apply(deployment("m-b", "u", "b")));
    index.apply(&watcher::Event::Delete(deployment("m-a", "u", "a")));
    let revisions = |i: &Index| {
        i.observe("u", "ns", "m")
            .revisions
            .into_iter()
            .map(|r| r.revision)
            .collect::<Vec<_>>()
    };
    assert_eq!(revisions(&index), ["b"]);
    // A relist that no longer holds m-b (deleted while the watch was down) and holds m-c.
    index.apply(&watcher::Event::<Deployment>::Init);
    index.apply(&watcher::Event::InitApply(deployment("m-c", "u", "c")));
    assert_eq!(
        revisions(&index),
        ["b"],
        "the old view stands until the relist is complete"
    );
    index.apply(&watcher::Event::<Deployment>::InitDone);
    assert_eq!(revisions(&index), ["c"]);
}

#[test]
fn pods_are_found_by_their_deployment_label() {
    let index = Index::default();
    index.apply(&watcher::Event::Apply(pod("m-a-1")));
    index.apply(&watcher::Event::Apply(Pod {
        metadata: meta("unlabelled", None, &[]),
        ..Default::default()
    }));
    let observed = index.observe("any-uid", "ns", "m");
    assert_eq!(observed.pods.len(), 1);
    assert!(index.observe("any-uid", "other-ns", "m").pods.is_empty());
}

#[tokio::test]
async fn ready_once_every_kind_has_listed() {
    let index = Index::default();
    let ready = |i: &Index| {
        let i = i.clone();
        async move {
            tokio::time::timeout(std::time::Duration::from_millis(50), i.ready())
                .await
                .is_ok()
        }
    };
    index.apply(&watcher::Event::<Deployment>::InitDone);
    index.apply(&watcher::Event::<Service>::InitDone);
    index.apply(&watcher::Event::<ConfigMap>::InitDone);
    index.apply(&watcher::Event::<PodDisruptionBudget>::InitDone);
    assert!(!ready(&index).await, "pods have not listed");
    index.apply(&watcher::Event::<Pod>::InitDone);
    assert!(ready(&index).await);
    index.apply(&watcher::Event::<Pod>::InitDone);
    assert!(ready(&index).await, "a relist keeps it ready");
}

#[test]
fn a_service_of_ours_by_name_keeps_its_cluster_ip_even_without_an_owner() {
    let index = Index::default();
    let mut unowned = service("m-stable", "ignored");
    unowned.metadata.owner_references = None;
    unowned.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
        cluster_ip: Some("10.96.0.7".into()),
        ..Default::default()
    });
    index.apply(&watcher::Event::Apply(unowned));
    let observed = index.observe("u", "ns", "m");
    assert_eq!(
        observed.cluster_ips.get("m-stable").map(String::as_str),
        Some("10.96.0.7")
    );
    assert!(
        observed.applied.is_empty(),
        "not ours: its spec hash never skips our write"
    );
}
