"""The radiologist's viewer (issue 18): OHIF, from npm's prebuilt `@ohif/app` (fetch),
served by the gateway at /viewer/ against its own DICOMweb (site), or by the compose
`viewer` service (nginx) against Orthanc's."""
