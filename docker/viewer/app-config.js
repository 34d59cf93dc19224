// OHIF viewer configuration written by service.viewer.site (dicom-synth).
window.config = {
  routerBasename: "/",
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: "dicom-synth",
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: "dicom-synth",
      configuration: {
        qidoRoot: window.location.origin + "/dicom-web",
        wadoRoot: window.location.origin + "/dicom-web",
        wadoUriRoot: window.location.origin + "/dicom-web",
        "friendlyName": "Orthanc (demo PACS)",
        "name": "dicom-synth",
        "qidoSupportsIncludeField": true,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": true,
        "supportsFuzzyMatching": false,
        "supportsWildcard": true,
        "staticWado": false,
        "omitQuotationForMultipartRequest": true,
        "bulkDataURI": {
          "enabled": true,
          "relativeResolution": "studies"
        }
      },
    },
  ],
};
