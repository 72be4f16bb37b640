//! The Helm chart installs into a real API server, and its least-privilege RBAC is enough: the
//! operator, running as the chart's ServiceAccount, reconciles a ModelDeployment to Available and
//! records Events, and it may check node agents' tokens with a TokenReview.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Event};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use modelfleet_crds::ModelDeployment;
use modelfleet_operator::{
    OperatorConfig, controller,
    http::HttpState,
    telemetry::{AuthError, Authenticator},
};
use modelfleet_testkit::{ClusterConfig, LocalCluster, nodes, testing::helm_install_chart, wait::wait_for};

#[tokio::test]
async fn the_chart_installs_and_its_rbac_suffices() {
    let cluster = LocalCluster::start(ClusterConfig::default()).await.unwrap();
    helm_install_chart(&cluster);

    let admin = cluster.client().await.unwrap();
    let operator_deployment = Api::<Deployment>::namespaced(admin.clone(), "modelfleet-system")
        .get("modelfleet")
        .await
        .unwrap();
    assert_eq!(operator_deployment.spec.and_then(|s| s.replicas), Some(2));
    nodes::add_cpu_nodes(&admin, 1).await.unwrap();

    // The operator, with exactly the chart's permissions.
    let as_operator = impersonating_the_chart_service_account(&cluster).await;
    let as_operator_for_auth = as_operator.clone();
    let operator_config = OperatorConfig {
        lease_namespace: "modelfleet-system".into(),
        lease_name: "modelfleet".into(),
        ..Default::default()
    };
    let http = HttpState::default();
    let operator = tokio::spawn(controller::run(
        as_operator,
        operator_config,
        http.clone(),
        std::future::pending(),
    ));

    let spec = serde_yaml::from_str(
        "model: {name: m, version: '1', uri: 'hf://o/m'}\nruntime: {device: cpu}\nresources: {gpus: 0}\n",
    )
    .unwrap();
    let mut md = ModelDeployment::new("rbac", spec);
    md.metadata.namespace = Some("default".into());
    let api: Api<ModelDeployment> = Api::namespaced(admin.clone(), "default");
    api.create(&PostParams::default(), &md).await.unwrap();
    wait_for(
        &api,
        "rbac",
        Duration::from_secs(60),
        "Available",
        |md: &ModelDeployment| {
            md.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(modelfleet_crds::v1alpha1::Phase::Available))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nmetrics:\n{}", http.metrics.render()));
    let events = Api::<Event>::namespaced(admin.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("RevisionCreated")),
        "Events are allowed"
    );
    let metrics = http.metrics.render();
    assert!(
        !metrics.contains("modelfleet_operator_reconcile_errors_total{"),
        "no forbidden errors:\n{metrics}"
    );
    // Node agents' tokens: the chart lets the operator ask for TokenReviews.
    assert_token_reviews_work(&admin, as_operator_for_auth).await;
    operator.abort();
    cluster.stop();
}

/// A client that acts as the chart's ServiceAccount (impersonation), so the test runs with
/// exactly its RBAC.
async fn impersonating_the_chart_service_account(cluster: &LocalCluster) -> Client {
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(cluster.kubeconfig_path()).expect("kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("kubeconfig");
    config.auth_info.impersonate = Some("system:serviceaccount:modelfleet-system:modelfleet".into());
    Client::try_from(config).expect("client")
}

/// A node agent's token passes the operator's TokenReview, a made-up one is refused.
async fn assert_token_reviews_work(admin: &Client, as_operator: Client) {
    let token = modelfleet_testkit::agents::request_agent_token(admin, "default")
        .await
        .expect("an agent token");
    let auth = Authenticator::token_review(as_operator, "modelfleet-operator");
    let user = auth
        .authenticate(Some(&format!("Bearer {token}")))
        .await
        .unwrap_or_else(|e| panic!("TokenReview as the chart's ServiceAccount: {e}"));
    assert_eq!(user, "system:serviceaccount:default:modelfleet-node-agent");
    let refused = auth.authenticate(Some("Bearer not-a-token")).await;
    assert!(matches!(refused, Err(AuthError::Rejected(_))), "{refused:?}");
}
