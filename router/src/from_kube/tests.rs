use super::*;

fn md(namespace: &str, name: &str, extra_spec: &str, status: &str, created: &str) -> Arc<ModelDeployment> {
    let yaml = format!(
        "apiVersion: modelfleet.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: {name}, namespace: {namespace}, creationTimestamp: '{created}'}}\nspec:\n  model: {{name: {name}-model, version: '1', uri: 'hf://x/y'{extra_spec}}}\n  batching: {{tiers: [{{name: paid}}, {{name: free}}]}}\nstatus: {status}\n"
    );
    Arc::new(serde_yaml::from_str(&yaml).expect("fixture"))
}

fn pod(namespace: &str, deployment: &str, name: &str, revision: &str, ip: &str, ready: bool) -> Arc<Pod> {
    let yaml = format!(
        "metadata: {{name: {name}, namespace: {namespace}, labels: {{modelfleet.dev/deployment: {deployment}, modelfleet.dev/revision: {revision}}}}}\nstatus: {{podIP: '{ip}', conditions: [{{type: Ready, status: '{}'}}]}}\n",
        if ready { "True" } else { "False" }
    );
    Arc::new(serde_yaml::from_str(&yaml).expect("fixture"))
}

const STABLE: &str = "{stable: {revision: r1, version: '1'}, replicas: 2}";
const CANARY: &str = "{stable: {revision: r1, version: '1'}, candidate: {revision: r2, version: '2', trafficWeight: 20}, replicas: 3}";

#[test]
fn ready_pods_of_each_revision_become_endpoints() {
    let mds = [md("a", "emb", "", CANARY, "2026-01-01T00:00:00Z")];
    let pods = [
        pod("a", "emb", "emb-r1-0", "r1", "10.0.0.1", true),
        pod("a", "emb", "emb-r1-1", "r1", "10.0.0.2", false),
        pod("a", "emb", "emb-r2-0", "r2", "10.0.0.3", true),
        pod("b", "emb", "other-ns", "r1", "10.0.0.9", true),
    ];
    let table = build(&mds, &pods, &LoadBoard::default());
    let m = table.resolve("emb-model").expect("served name");
    assert_eq!(m.stable.endpoints.len(), 1, "the unready pod is left out");
    assert_eq!(m.stable.endpoints[0].load.addr.to_string(), "10.0.0.1:8080");
    let (candidate, weight) = m.candidate.as_ref().expect("candidate");
    assert_eq!((candidate.name.as_str(), *weight), ("r2", 20));
    assert_eq!(candidate.endpoints.len(), 1);
    assert_eq!(
        table.addresses().len(),
        2,
        "another namespace's pod is not this model's"
    );
}

#[test]
fn a_model_without_a_stable_revision_is_not_served_yet() {
    let mds = [md("a", "new", "", "{replicas: 0}", "2026-01-01T00:00:00Z")];
    assert!(
        build(&mds, &[], &LoadBoard::default())
            .resolve("new-model")
            .is_none()
    );
}

#[test]
fn aliases_select_the_model_and_the_older_claimant_keeps_a_name() {
    let mds = [
        md(
            "a",
            "young",
            ", aliases: [shared]",
            STABLE,
            "2026-02-01T00:00:00Z",
        ),
        md(
            "a",
            "old",
            ", aliases: [shared, old-alias]",
            STABLE,
            "2026-01-01T00:00:00Z",
        ),
    ];
    let table = build(&mds, &[], &LoadBoard::default());
    assert_eq!(
        table.resolve("shared").map(|m| m.deployment.as_str()),
        Some("old")
    );
    assert_eq!(
        table.resolve("old-alias").map(|m| m.deployment.as_str()),
        Some("old")
    );
    assert_eq!(
        table.resolve("a/young").map(|m| m.deployment.as_str()),
        Some("young")
    );
    assert!(table.resolve("nothing").is_none());
}

#[test]
fn terminating_pods_and_pods_without_ips_are_not_endpoints() {
    let mut terminating = (*pod("a", "emb", "t", "r1", "10.0.0.1", true)).clone();
    terminating.metadata.deletion_timestamp = terminating.metadata.creation_timestamp.clone().or(Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    ));
    let no_ip = pod("a", "emb", "n", "r1", "", true);
    let found = ready_endpoints(&[Arc::new(terminating), no_ip]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn tiers_map_callers_to_the_models_tiers() {
    let mds = [md("a", "emb", "", STABLE, "2026-01-01T00:00:00Z")];
    let table = build(&mds, &[], &LoadBoard::default());
    let m = table.resolve("emb-model").expect("model");
    assert_eq!(m.tier_for(Some("paid")), Some("paid"));
    assert_eq!(m.tier_for(Some("gold")), Some("free"), "unknown tier: the lowest");
    assert_eq!(m.tier_for(None), Some("free"));
}
